"""1B- and 7B-shaped Llamas on one GPU: fedit's training step beside a bare peft loop, and each
speed lever on and off (issue 32, part 3).

    .venv/bin/python benchmarks/gpu_scale.py [--record]   # the reduced set (scripts/gpu-check.sh)
    .venv/bin/python benchmarks/gpu_scale.py --full       # every shape, base, length and lever
    .venv/bin/python benchmarks/gpu_scale.py --record-from runs/gpu-check/gpu-scale
    .venv/bin/python benchmarks/gpu_scale.py --smoke --output-dir /tmp/s  # tiny, CPU, 2 steps

**Models**, random-initialised from ``gpu_shapes.SHAPES`` (no hub): `1b` has Llama-3.2-1B's
dimensions, `7b` Llama-2-7B's. Base `bf16`: every weight in bf16. Base `4bit`: every linear layer
of the decoder quantized by bitsandbytes to NF4 (double quantization, bf16 compute) and the
model marked 4-bit, so fedit's ``apply_lora`` prepares it as it prepares a loaded 4-bit model.

**Training**: LoRA r=16 (alpha 32, dropout 0.05) on every linear layer of the decoder (peft's
``all-linear``), AdamW, bf16 autocast, one micro-batch per step. Rows are random tokens, exactly
``seq`` long; the first half is the prompt (no loss), the second half the response. fedit's loop
(``train_local``) and the bare peft loop (the model's own loss over full logits, backward,
AdamW) train the same model from the same adapter.

**Micro-batch**: the largest that fits, for each loop and lever: ``--max-tokens`` / seq rows
first, halved on every CUDA out-of-memory error.

**Figures**: trained tokens/s over ``--steps`` steps after ``--warmup`` (the warm-up column
includes compilation); peak memory allocated (torch's allocator high-water mark, the CUDA
context not included); MFU = F · sequences/s / the card's dense bf16 peak (``PEAK_BF16`` in
``gpu_shapes.py``), where for a sequence of s tokens, r of them scored (s/2 here):

    F = 4·N_lin·s + 6·N_lora·s + 4·d·V·r + 12·L·s²·d

- 4·N_lin·s: the frozen decoder's linear layers (N_lin weights): 2 FLOPs per weight per token
  forward and 2 backward for the activation gradients, none for weight gradients (frozen);
- 6·N_lora·s: the LoRA factors: forward, activation gradients and weight gradients;
- 4·d·V·r: the output head (d × V) at the r positions that predict a scored token, forward and
  activation gradient;
- 12·L·s²·d: attention's QKᵀ and A·V, 2·2·s²·d per layer forward (d = heads × head size), twice
  that backward; the whole s², no discount for the causal mask (PaLM's convention).

Embedding lookups, norms, activations and the optimizer are not counted. Both loops are credited
the same F: what the bare loop does beyond it (logits at every position) is its overhead.

**Levers**, fedit's loop, each alone against fedit with none: flash attention (only where
``flash_attn`` imports), ``train.kernels=liger``, ``train.gradient_checkpointing``,
``train.compile`` (``--full`` only: its compilation does not fit gpu-check's time). The row
marked "as shipped" is what fedit's defaults run on this machine (``train.kernels=auto``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.util
import itertools
import json
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from common import ROOT, Clock, record_from, section_block, torch_threads, write_section
from gpu_shapes import SHAPES, build_model, card_peak, flops_per_sequence, random_rows

from fedit.client.batching import collate, iterate_batches
from fedit.client.compile import forget
from fedit.client.device import autocast_context, model_device
from fedit.client.train import train_local
from fedit.config import LoraConfig, TrainConfig
from fedit.model.kernels import apply_kernels, kernels_wanted, module_patches_undone
from fedit.model.lora import apply_lora, get_adapter_state, set_adapter_state

SECTION = "gpu_scale"
TITLE = "1B- and 7B-shaped models on one GPU"
LORA = LoraConfig(r=16, alpha=32, dropout=0.05, target_modules="all-linear")
# (shape, base, seq, levers): the reduced set that gpu-check runs; --full runs every combination.
REDUCED = [
    ("1b", "bf16", 2048, ("flash", "liger", "checkpointing")),
    ("7b", "bf16", 2048, ("liger",)),
    ("7b", "4bit", 2048, ("liger",)),
]
ALL_LEVERS = ("checkpointing", "compile", "flash", "liger")  # liger last: it patches for good
NO_LEVER = "fedit, no lever"
BARE = "bare peft loop"


@dataclasses.dataclass
class Result:
    """One loop at its largest micro-batch."""

    micro_batch: int
    seconds: float  # the timed steps
    tokens: int
    warmup_seconds: float
    peak_gib: float | None
    loss: float


def _fedit_run(model: Any, rows: list, micro: int, args: Any, levers: dict) -> Result:
    clock, total = Clock(model_device(model)), args.warmup + args.steps
    cfg = TrainConfig(
        local_steps=total,
        batch_size=micro,
        micro_batch_size=micro,
        lr=1e-4,
        cutoff_len=len(rows[0].input_ids),
        gradient_checkpointing=levers.get("checkpointing", False),
        compile=levers.get("compile", False),
    )
    marks = {0: clock.now()}

    def progress(step: int, total: int, loss: float) -> None:
        if step in (args.warmup, total):
            marks[step] = clock.now()

    update = train_local(model, rows, cfg, client_id=0, lr=cfg.lr, seed=0, progress=progress)
    return Result(
        micro,
        marks[total] - marks[args.warmup],
        micro * args.steps * len(rows[0].input_ids),
        marks[args.warmup] - marks[0],
        None,
        update.train_loss,
    )


def _bare_run(model: Any, rows: list, micro: int, args: Any, levers: dict) -> Result:
    del levers  # the bare loop has none
    device = model_device(model)
    clock, total = Clock(device), args.warmup + args.steps
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batches = iterate_batches(rows, micro, seed=0, group_by_length=False)
    marks, losses = {0: clock.now()}, []
    model.train()
    try:
        for step, batch in enumerate(itertools.islice(batches, total), start=1):
            inputs = {key: value.to(device) for key, value in collate(batch, 0).items()}
            with autocast_context(device, "auto"):
                loss = model(**inputs).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            if step in (args.warmup, total):
                marks[step] = clock.now()
    finally:
        model.eval()
    seq = len(rows[0].input_ids)
    loss_mean = statistics.mean(float(value) for value in losses)
    seconds = marks[total] - marks[args.warmup]
    warmup = marks[args.warmup] - marks[0]
    return Result(micro, seconds, micro * args.steps * seq, warmup, None, loss_mean)


def _free(model: Any) -> None:
    for param in model.parameters():
        param.grad = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def largest_fit(
    run: Callable[..., Result], model: Any, rows: list, args: Any, levers: dict
) -> Result | None:
    """``run`` at the largest micro-batch that fits, halving from ``--max-tokens`` / seq."""
    cuda = model_device(model).type == "cuda"
    micro = args.smoke_batch if not cuda else max(1, args.max_tokens // len(rows[0].input_ids))
    start = get_adapter_state(model)
    while micro >= 1:
        set_adapter_state(model, start)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        out_of_memory = False
        try:
            result = run(model, rows, micro, args, levers)
        except torch.OutOfMemoryError:
            out_of_memory = True
        if not out_of_memory:
            if cuda:
                result.peak_gib = torch.cuda.max_memory_allocated() / 2**30
            set_adapter_state(model, start)
            _free(model)
            return result
        _free(model)  # outside the except block: its traceback holds the step's tensors
        micro //= 2
    set_adapter_state(model, start)
    return None


@contextlib.contextmanager
def _attention(model: Any, implementation: str) -> Iterator[None]:
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation("sdpa")


def _unavailable(lever: str, device: torch.device) -> str | None:
    """Why ``lever`` cannot run here, or None."""
    if lever == "flash":
        if importlib.util.find_spec("flash_attn") is None:
            return "not run: flash_attn is not installed"
        if device.type != "cuda":
            return "not run: needs CUDA"
    if lever == "liger" and not kernels_wanted("auto", device.type):
        return "not run: needs CUDA and liger-kernel (pip install 'fedit[kernels]')"
    return None


LEVER_LABELS = {
    "checkpointing": "gradient checkpointing (train.gradient_checkpointing=true)",
    "compile": "torch.compile (train.compile=true)",
    "flash": "flash attention (attn_implementation=flash_attention_2)",
    "liger": "liger kernels (train.kernels=liger)",
}


def measure_case(shape: str, base: str, seq: int, levers: tuple, args: Any) -> list[dict]:
    """The table's rows for one shape, base and sequence length."""
    device = torch.device("cpu" if args.smoke else "cuda")
    model = build_model(shape, base, device)
    peft_model = apply_lora(model, LORA, seed=0)
    lora_params = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    flops = flops_per_sequence(shape, seq, seq // 2, lora_params)
    start_micro = args.smoke_batch if args.smoke else max(1, args.max_tokens // seq)
    rows = random_rows(SHAPES[shape]["vocab_size"], seq, max(8, start_micro))
    shipped = "liger" if kernels_wanted("auto", device.type) else None
    case = {"shape": shape, "base": base, "seq": seq, "flops_per_sequence": flops}
    table: list[dict] = []

    def add(label: str, run: Callable[..., Result], lever_cfg: dict | None = None) -> None:
        print(f"gpu_scale: {shape} {base} seq {seq}: {label}", flush=True)
        note = "does not fit at micro-batch 1"
        try:
            result = largest_fit(run, peft_model, rows, args, lever_cfg or {})
        except Exception as err:  # noqa: BLE001 - one failing lever must not cost the others
            traceback.print_exc()
            first = (str(err).splitlines() or [""])[0][:120]
            result, note = None, f"failed: {type(err).__name__}: {first}"
            _free(peft_model)
        entry = {**case, "loop": label, "result": dataclasses.asdict(result) if result else None}
        table.append(entry if result else {**entry, "note": note})

    add(BARE, _bare_run)
    add(NO_LEVER + (" (as shipped)" if shipped is None else ""), _fedit_run)
    for lever in (name for name in ALL_LEVERS if name in levers):
        label = LEVER_LABELS[lever] + (" (as shipped)" if lever == shipped else "")
        reason = _unavailable(lever, device)
        if reason is not None:
            table.append({**case, "loop": label, "result": None, "note": reason})
        elif lever == "flash":
            with _attention(model, "flash_attention_2"):
                add(label, _fedit_run)
        elif lever == "liger":  # last: it patches the model for good
            with module_patches_undone("llama"):
                apply_kernels(model, "liger", device.type)
                add(label, _fedit_run)
        else:
            add(label, _fedit_run, {lever: True})
            forget(peft_model)
    return table  # the model goes with this frame; main frees the memory


def _rate(entry: dict) -> float | None:
    result = entry["result"]
    return result["tokens"] / result["seconds"] if result else None


def report(entries: list[dict], device_name: str, peak: tuple[str, float] | None) -> str:
    """The markdown table, the formula and the targets' verdicts."""
    lines = [
        f"Device: {device_name}; dense bf16 peak "
        + (f"{peak[1] / 1e12:.0f} TFLOP/s ({peak[0]})." if peak else "unknown here: MFU n/a."),
        "MFU counts F = 4·N_lin·s + 6·N_lora·s + 4·d·V·r + 12·L·s²·d FLOPs per sequence of s "
        "tokens with r = s/2 scored (frozen base: forward and activation gradients only; LoRA: "
        "6 per weight per token; head at scored positions; attention over the full s²), the "
        "same for both loops; `benchmarks/gpu_scale.py`'s docstring derives it. Models are "
        "random-initialised, so the loss only shows that nothing broke (about ln V).",
        "",
        "| shape | base | seq | loop | micro-batch | tokens/s | × bare | peak GiB | MFU "
        "| mean loss | warm-up (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    bare_rates = {(e["shape"], e["base"], e["seq"]): _rate(e) for e in entries if e["loop"] == BARE}
    for entry in entries:
        key = (entry["shape"], entry["base"], entry["seq"])
        head = f"| {key[0]} | {key[1]} | {key[2]} | {entry['loop']} "
        result = entry["result"]
        if result is None:
            lines.append(head + f"| {entry['note']} | | | | | | |")
            continue
        rate, bare = _rate(entry), bare_rates.get(key)
        entry["tokens_per_second"] = rate
        entry["mfu"] = (
            entry["flops_per_sequence"] * rate / entry["seq"] / peak[1] if peak and rate else None
        )
        peak_gib = "n/a" if result["peak_gib"] is None else f"{result['peak_gib']:.1f}"
        ratio = f"{rate / bare:.2f}x" if rate and bare else "n/a"
        mfu = f"{100 * entry['mfu']:.1f}%" if entry["mfu"] is not None else "n/a"
        lines.append(
            head + f"| {result['micro_batch']} | {rate:,.0f} | {ratio} | {peak_gib} | {mfu} "
            f"| {result['loss']:.3f} | {result['warmup_seconds']:.1f} |"
        )
    targets = verdicts(entries, bare_rates)
    return "\n".join(lines + (["", *targets] if targets else []))


def verdicts(entries: list[dict], bare_rates: dict) -> list[str]:
    """Issue 32's targets on one H100, for the rows that were measured."""
    lines = []
    for entry in entries:
        if "(as shipped)" not in entry["loop"] or entry["result"] is None:
            continue
        key, mfu = (entry["shape"], entry["base"], entry["seq"]), entry.get("mfu")
        shown = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
        bare = bare_rates.get(key)
        if key == ("7b", "bf16", 2048):
            speedup = entry["tokens_per_second"] / bare if bare else None
            lines.append(
                f"- 7B bf16 at 2048 as shipped: MFU {shown} (target ≥ 40%), "
                f"{speedup:.2f}x the bare loop (target ≥ 1.3x)."
                if speedup
                else f"- 7B bf16 at 2048 as shipped: MFU {shown} (target ≥ 40%)."
            )
        elif key == ("7b", "4bit", 2048) and entry["result"]["peak_gib"] is not None:
            peak = entry["result"]["peak_gib"]
            lines.append(f"- 7B 4-bit at 2048 as shipped: peak {peak:.1f} GiB (target < 16 GiB).")
        elif key[0] == "1b":
            lines.append(f"- 1B {key[1]} at {key[2]} as shipped: MFU {shown} (target ≥ 35%).")
    return ["Targets (one H100):", *lines] if lines else []


def cases(args: Any) -> list[tuple[str, str, int, tuple]]:
    if args.smoke:
        return [("tiny", "bf16", 64, ("flash", "liger", "checkpointing")), ("tiny", "4bit", 64, ())]
    if args.full:
        return [
            (shape, base, seq, ALL_LEVERS)
            for shape, base, seq in itertools.product(("1b", "7b"), ("bf16", "4bit"), (512, 2048))
        ]
    return REDUCED


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="every shape, base, length, lever")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=2, help="steps before the timed ones")
    parser.add_argument("--max-tokens", type=int, default=65536, help="first micro-batch × seq")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "runs" / "gpu-scale")
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.md too")
    parser.add_argument("--record-from", type=Path, help="put DIR/section.md into the docs")
    parser.add_argument("--smoke", action="store_true", help="tiny shape, 2 steps, CPU")
    args = parser.parse_args(argv)
    args.smoke_batch = 2
    if args.smoke:
        args.warmup, args.steps = 1, 1
    return args


def main(argv: list[str] | None = None) -> str:
    """Measure every case, write the output folder (and the docs with ``--record``)."""
    args = parse_args(argv)
    if args.record_from:
        record_from(args.record_from / "section.md")
        return ""
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_scale: needs a CUDA GPU (--smoke runs the tiny shape on a CPU)")
    started = time.perf_counter()
    with torch_threads(1 if args.smoke else None):
        entries = []
        for case in cases(args):
            entries += measure_case(*case, args)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(0) if not args.smoke else "CPU (smoke: measures nothing)"
    body = report(entries, name, None if args.smoke else card_peak(name))
    body += f"\n\nThe whole run took {time.perf_counter() - started:.0f} s."
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "figures.json").write_text(json.dumps(entries, indent=1) + "\n")
    (args.output_dir / "table.md").write_text(body + "\n")
    if not args.smoke:
        block = section_block(SECTION, TITLE, body)
        (args.output_dir / "section.md").write_text(block + "\n")
        if args.record:
            write_section(SECTION, block)
    print(body)
    return body


if __name__ == "__main__":
    main()
