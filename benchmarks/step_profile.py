"""Where a client's time goes, in one run: setup, steps and teardown of every client of a short
federated run; fedit's steady-state step against a bare peft loop's; host-device syncs per step;
torch.profiler's top operators and a Chrome trace.

    .venv/bin/python benchmarks/step_profile.py --device cuda [--record]
    .venv/bin/python benchmarks/step_profile.py --record-from runs/gpu-check/step-profile
    .venv/bin/python benchmarks/step_profile.py --smoke --output-dir /tmp/p  # tiny Llama, CPU

What is measured (issue 32, part 2):
- **Split**: the quickstart's rounds (``--rounds``) through the in-process transport, each
  client's round trip timed from the instruction's bytes to the checked reply. Marks: the
  round trip's start; each step's start (``client/train`` computing the step's learning rate,
  its first act) and end (the progress callback, after the optimizer step); the round trip's
  end. setup = start → first step (instruction decoding, adapter load, optimizer, batches,
  device copies); steps = first step's start → last step's end; teardown = the rest (adapter
  back to the CPU, reply encoding and checks). On CUDA every mark synchronises first, so work is
  counted where it was queued. The three add up to each round trip by construction; their sum
  over clients is checked against the transport's own wall time.
- **Step**: ``--steps`` steps after ``--warmup`` of fedit's ``train_local`` (as configured:
  dtype, autocast, compile) and of a bare peft loop (the model's own loss over full logits,
  backward, AdamW) on the same model, device, autocast and batches; median of ``--repeats``.
- **Syncs per step** over the same steady steps: on CUDA, the profiler's CUDA runtime calls that
  block the host (``cudaStreamSynchronize``, ``cudaDeviceSynchronize``, ``cudaEventSynchronize``,
  ``cudaMemcpy``); on a CPU there is no device, so "n/a". Beside it, on either device, the reads
  of tensor values that Python code makes (``.item()``, ``int()``, ``float()``, ``bool()``,
  ``.tolist()``, ``.nonzero()``; on CUDA only of CUDA tensors), counted by wrapping those
  methods; reads inside C++ operators (boolean-mask indexing) are not in that count.
- **Operators**: the same steady steps of fedit under torch.profiler: top 20 by self CPU time
  and by self CUDA time (``ops_cpu.txt``, ``ops_cuda.txt``) and ``trace.json`` (chrome://tracing).

The split is here; the step, syncs and operators are measured in ``step_loops.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from common import ROOT, Clock, record_from, section_block, torch_threads, write_section
from step_loops import READS, SYNC_CALLS, TOP, profile_steps, steady_step_seconds

import fedit.client.train as train_module
from fedit.client.device import model_device
from fedit.config import Config, load_config
from fedit.data.prepare import prepare_data
from fedit.engines.simulation import SimulationTransport
from fedit.experiment import Setup, load_setup
from fedit.server.loop import round_lr
from fedit.server.observer import RunObserver
from fedit.strategy import build_strategy
from fedit.types import ClientUpdate, FitInstruction

SECTION = "step_profile"
TITLE = "Per-step overhead: where a client's time goes"
SMOKE = [
    "data.synthetic.num_examples=160",
    "data.test_per_category=2",
    "federation.num_clients=4",
    "federation.fraction_fit=0.5",
    "train.local_steps=2",
    "train.batch_size=4",
    "train.micro_batch_size=2",
    "train.cutoff_len=64",
]


@dataclasses.dataclass
class ClientTimes:
    """One client's round trip: its marks, in seconds of ``time.perf_counter``."""

    server_round: int
    client_id: int
    start: float
    step_starts: list[float] = dataclasses.field(default_factory=list)
    step_ends: list[float] = dataclasses.field(default_factory=list)
    end: float = 0.0

    def split(self) -> dict[str, float]:
        steps = [end - start for start, end in zip(self.step_starts, self.step_ends, strict=True)]
        return {
            "setup": self.step_starts[0] - self.start,
            "first_step": steps[0],
            "median_step": statistics.median(steps[1:] or steps),
            "steps": self.step_ends[-1] - self.step_starts[0],
            "teardown": self.end - self.step_ends[-1],
            "total": self.end - self.start,
        }


class TimedTransport(SimulationTransport):
    """The in-process transport, marking each client's round trip and steps."""

    def __init__(self, cfg: Config, setup: Setup, clock: Clock):
        super().__init__(cfg, setup.server.model, setup.client_data, _StepEnds(self))
        self.clock = clock
        self.server_round = 0
        self.clients: list[ClientTimes] = []

    def _fit_one(self, instruction: FitInstruction) -> ClientUpdate:
        self.clients.append(ClientTimes(self.server_round, instruction.client_id, self.clock.now()))
        reply = super()._fit_one(instruction)
        self.clients[-1].end = self.clock.now()
        return reply


class _StepEnds(RunObserver):
    def __init__(self, transport: TimedTransport):
        self.transport = transport

    def on_step(self, step: int, total_steps: int, loss: float) -> None:
        self.transport.clients[-1].step_ends.append(self.transport.clock.now())


def federated_split(cfg: Config, setup: Setup, rounds: int) -> tuple[list[ClientTimes], float]:
    """Run ``rounds`` rounds; every client's marks and the transport's wall time in all."""
    clock = Clock(model_device(setup.server.model))
    transport = TimedTransport(cfg, setup, clock)
    original_lr = train_module.local_step_lr

    def marked_lr(*args: Any, **kwargs: Any) -> float:  # the first act of every step
        transport.clients[-1].step_starts.append(clock.now())
        return original_lr(*args, **kwargs)

    strategy, state, fit_seconds = build_strategy(cfg), setup.server.initial_state(), 0.0
    with mock.patch.object(train_module, "local_step_lr", marked_lr):
        for server_round in range(1, rounds + 1):
            transport.server_round = server_round
            lr = round_lr(cfg, server_round)
            _, instructions = strategy.configure_fit(
                server_round, state, transport.client_sizes, lr
            )
            started = clock.now()
            updates = transport.fit(instructions, server_round)
            fit_seconds += clock.now() - started
            state, _ = strategy.aggregate_fit(server_round, state, updates)
    return transport.clients, fit_seconds


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def split_table(clients: list[ClientTimes], fit_seconds: float) -> list[str]:
    """Each client's setup, steps and teardown; their sums against the transport's time."""
    lines = [
        "| round | client | setup (s) | first step (s) | median step (s) | all steps (s) "
        "| teardown (s) | round trip (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    splits = [client.split() for client in clients]
    for client, split in zip(clients, splits, strict=True):
        lines.append(
            f"| {client.server_round} | {client.client_id} | {split['setup']:.3f} "
            f"| {split['first_step']:.3f} | {split['median_step']:.3f} | {split['steps']:.3f} "
            f"| {split['teardown']:.3f} | {split['total']:.3f} |"
        )
    total = {key: sum(split[key] for split in splits) for key in ("setup", "steps", "teardown")}
    lines.append(
        f"| all | {len(clients)} | {total['setup']:.3f} | | | {total['steps']:.3f} "
        f"| {total['teardown']:.3f} | {sum(total.values()):.3f} |"
    )
    fixed = statistics.mean(split["setup"] + split["teardown"] for split in splits)
    lines += [
        "",
        f"Setup + steps + teardown over all clients: {sum(total.values()):.3f} s; the "
        f"transport's own wall time for the same rounds: {fit_seconds:.3f} s.",
        f"Per-client fixed cost (setup + teardown), mean: **{fixed:.3f} s** "
        "(target on one H100 or H200: under 0.2 s).",
    ]
    return lines


def report(
    cfg: Config, args: Any, clients: list[ClientTimes], fit: float, step: dict, per_step: dict
) -> str:
    """The markdown of every figure; the operator tables follow in code blocks."""
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (no CUDA device)"
    ratio = step["fedit"] / step["bare"]
    lines = [
        f"Device: {where}. Model `{cfg.model.name}` (model.dtype={cfg.model.dtype}, "
        f"quantization={cfg.model.quantization}), LoRA r={cfg.lora.r} on "
        f"{cfg.lora.target_modules}; train.autocast={cfg.train.autocast}, "
        f"train.compile={cfg.train.compile}, train.kernels={cfg.train.kernels}, "
        f"batches of {cfg.train.batch_size} in micro-batches of {cfg.train.micro_batch_size}.",
        "",
        f"### Each client's time ({args.rounds} round(s) of this config, in-process)",
        "",
        *split_table(clients, fit),
        "",
        f"### Steady-state step ({args.steps} steps after {args.warmup}, median of {args.repeats})",
        "",
        "| loop | seconds per step | ratio to the bare loop |",
        "|---|---|---|",
        f"| fedit (`train_local` as configured) | {step['fedit']:.4f} | {ratio:.2f}x |",
        f"| bare peft loop (model's own loss, full logits, AdamW) | {step['bare']:.4f} | 1.00x |",
        "",
        f"fedit's step: **{ratio:.2f}x** the bare loop's (target on one H100 or H200: 1.1x or "
        "less).",
        "",
        "### Host-device syncs per step (same steady steps)",
        "",
        "| loop | blocking CUDA runtime calls per step (profiler) | Python reads of tensor "
        "values per step |",
        "|---|---|---|",
        f"| fedit | {_fmt(per_step['fedit_syncs'], 1)} | {per_step['fedit_reads']:.1f} |",
        f"| bare peft loop | {_fmt(per_step['bare_syncs'], 1)} | {per_step['bare_reads']:.1f} |",
        "",
        "Blocking calls: "
        + ", ".join(SYNC_CALLS)
        + " (n/a without CUDA). Reads: "
        + ", ".join(f"`{name}`" for name in READS)
        + (" of CUDA tensors." if device.type == "cuda" else " of any tensor (host ones too)."),
        "",
        f"### Top {TOP} operators of fedit's steady steps, by self CPU time",
        "",
        "```",
        (args.output_dir / "ops_cpu.txt").read_text().rstrip(),
        "```",
        "",
        f"### Top {TOP} operators by self CUDA time",
        "",
        "```",
        (args.output_dir / "ops_cuda.txt").read_text().rstrip(),
        "```",
        "",
        f"Chrome trace of those steps: `{args.output_dir / 'trace.json'}` (not kept in the docs).",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--device", choices=("cuda", "cpu"), default=default_device)
    parser.add_argument("--model", help="model.name (default: the config's)")
    parser.add_argument("--rounds", type=int, default=2, help="federated rounds for the split")
    parser.add_argument("--steps", type=int, default=20, help="steady-state steps timed")
    parser.add_argument("--warmup", type=int, default=3, help="steps before the timed ones")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output-dir", type=Path, default=ROOT / "runs" / "step-profile")
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.md too")
    parser.add_argument("--record-from", type=Path, help="put DIR/section.md into the docs")
    parser.add_argument("--smoke", action="store_true", help="tiny Llama, CPU, 2 steps")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args(argv)
    for key in ("rounds", "steps", "warmup", "repeats"):
        if getattr(args, key) < 1:
            parser.error(f"--{key}: must be >= 1")
    if args.smoke:
        args.device, args.rounds, args.steps, args.warmup, args.repeats = "cpu", 1, 2, 1, 1
    return args


def main(argv: list[str] | None = None) -> str:
    """Measure, write the output folder (and the docs with ``--record``); returns the body."""
    args = parse_args(argv)
    if args.record_from:
        record_from(args.record_from / "section.md")
        return ""
    args.output_dir.mkdir(parents=True, exist_ok=True)
    overrides = [f"model.device={args.device}", *(SMOKE if args.smoke else [])]
    # A smoke run measures nothing, and on a shared 2-core machine one thread is faster.
    with tempfile.TemporaryDirectory() as scratch, torch_threads(1 if args.smoke else None):
        if args.smoke and not args.model:
            sys.path.insert(0, str(ROOT / "tests"))
            from conftest import build_tiny_model

            args.model = str(build_tiny_model(Path(scratch) / "tiny-llama"))
        if args.model:
            overrides.append(f"model.name={args.model}")
        cfg = load_config(args.config, overrides + args.overrides)
        setup = load_setup(cfg, prepare_data(cfg))
        clients, fit_seconds = federated_split(cfg, setup, args.rounds)
        model, examples = setup.server.model, setup.client_data[0]
        step = steady_step_seconds(cfg, model, examples, args)
        per_step = profile_steps(cfg, model, examples, args, args.output_dir)
    body = report(cfg, args, clients, fit_seconds, step, per_step)
    figures = {
        "clients": [dataclasses.asdict(c) | {"split": c.split()} for c in clients],
        "fit_seconds": fit_seconds,
        "step_seconds": step,
        "per_step": per_step,
    }
    (args.output_dir / "figures.json").write_text(json.dumps(figures, indent=1) + "\n")
    (args.output_dir / "summary.md").write_text(body + "\n")
    if not args.smoke:
        block = section_block(SECTION, TITLE, body)
        (args.output_dir / "section.md").write_text(block + "\n")
        if args.record:
            write_section(SECTION, block)
    print(body)
    return body


if __name__ == "__main__":
    main()
