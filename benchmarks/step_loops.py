"""step_profile.py's steady-state steps: fedit's ``train_local`` and a bare peft loop on the same
model and batches, timed (seconds per step), then profiled (host-device syncs and Python reads of
tensor values per step; fedit's top operators and Chrome trace).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from common import Clock

from fedit.client.batching import collate, iterate_batches, split_micro_batches
from fedit.client.device import autocast_context, model_device, model_pad_token_id
from fedit.client.train import train_local
from fedit.config import Config
from fedit.model.lora import get_adapter_state, set_adapter_state

SYNC_CALLS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cudaMemcpy",
)
READS = ("item", "tolist", "__int__", "__float__", "__bool__", "nonzero")
TOP = 20


def _bare_step(model: Any, micro: list[list[Any]], optimizer: Any, autocast: str) -> None:
    """Collate, the model's own loss over full logits, backward, AdamW: a hand-written loop."""
    device, pad = model_device(model), model_pad_token_id(model)
    for examples in micro:
        batch = {key: value.to(device) for key, value in collate(examples, pad).items()}
        with autocast_context(device, autocast):
            loss = model(**batch).loss / len(micro)
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _bare_run(
    cfg: Config, model: Any, examples: list[Any], total: int
) -> Iterator[Callable[[], None]]:
    """The bare loop's steps over fedit's own batches (same seed), one callable per step."""
    train = cfg.train
    batches = iterate_batches(
        examples, train.batch_size, seed=0, group_by_length=train.group_by_length
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.lr)
    for batch in itertools.islice(batches, total):
        micro = split_micro_batches(batch, train.micro_batch_size)
        yield lambda micro=micro: _bare_step(model, micro, optimizer, train.autocast)


def steady_step_seconds(cfg: Config, model: Any, examples: list[Any], args: Any) -> dict:
    """Seconds per steady-state step of fedit and of the bare loop, median over repeats."""
    clock, start = Clock(model_device(model)), get_adapter_state(model)
    train = dataclasses.replace(cfg.train, local_steps=args.warmup + args.steps)
    seconds: dict[str, list[float]] = {"fedit": [], "bare": []}
    for _ in range(args.repeats):
        marks: dict[int, float] = {}

        def progress(step: int, total: int, loss: float, marks: dict = marks) -> None:
            if step in (args.warmup, total):
                marks[step] = clock.now()

        set_adapter_state(model, start)
        train_local(model, examples, train, client_id=0, lr=cfg.train.lr, seed=0, progress=progress)
        seconds["fedit"].append((marks[train.local_steps] - marks[args.warmup]) / args.steps)
        set_adapter_state(model, start)
        model.train()
        steps = list(_bare_run(cfg, model, examples, train.local_steps))
        for step in steps[: args.warmup]:
            step()
        began = clock.now()
        for step in steps[args.warmup :]:
            step()
        seconds["bare"].append((clock.now() - began) / args.steps)
        model.eval()
    set_adapter_state(model, start)
    return {name: statistics.median(values) for name, values in seconds.items()}


@contextlib.contextmanager
def counting_reads(device: torch.device) -> Iterator[dict[str, Any]]:
    """Count Python's reads of tensor values (on CUDA: of CUDA tensors) while ``on`` is set."""
    state: dict[str, Any] = {"on": False, "count": 0}
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(original: Callable) -> Callable:
        def counted(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if state["on"] and (device.type == "cpu" or self.is_cuda):
                state["count"] += 1
            return original(self, *args, **kwargs)

        return counted

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(original))
    try:
        yield state
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _syncs(events: Any) -> int:
    return sum(1 for event in events if event.name in SYNC_CALLS)


def profile_steps(cfg: Config, model: Any, examples: list[Any], args: Any, out: Path) -> dict:
    """Syncs and reads per step of fedit and of the bare loop; fedit's operator tables, trace."""
    from torch.profiler import ProfilerActivity, profile, schedule

    device = model_device(model)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    start = get_adapter_state(model)
    found: dict[str, Any] = {}

    def ready(prof: Any) -> None:  # the steady steps' profile: tables, trace, syncs
        averages = prof.key_averages()
        found["cpu_table"] = averages.table(sort_by="self_cpu_time_total", row_limit=TOP)
        found["cuda_table"] = (
            averages.table(sort_by="self_cuda_time_total", row_limit=TOP)
            if cuda
            else "n/a: no CUDA device in this run"
        )
        found["fedit_syncs"] = _syncs(prof.events())
        prof.export_chrome_trace(str(out / "trace.json"))

    train = dataclasses.replace(cfg.train, local_steps=args.warmup + args.steps)
    window = schedule(wait=args.warmup - 1, warmup=1, active=args.steps, repeat=1)
    with counting_reads(device) as reads:
        with profile(activities=activities, schedule=window, on_trace_ready=ready) as prof:

            def progress(step: int, total: int, loss: float) -> None:
                reads["on"] = args.warmup <= step < total  # steps warmup+1 .. total
                prof.step()

            set_adapter_state(model, start)
            train_local(
                model, examples, train, client_id=0, lr=cfg.train.lr, seed=0, progress=progress
            )
        found["fedit_reads"], reads["count"] = reads["count"], 0
        set_adapter_state(model, start)
        model.train()
        steps = list(_bare_run(cfg, model, examples, train.local_steps))
        for step in steps[: args.warmup]:
            step()
        reads["on"] = True
        with profile(activities=activities) as bare:
            for step in steps[args.warmup :]:
                step()
        reads["on"] = False
        model.eval()
        found["bare_reads"], found["bare_syncs"] = reads["count"], _syncs(bare.events())
    set_adapter_state(model, start)
    (out / "ops_cpu.txt").write_text(found["cpu_table"] + "\n")
    (out / "ops_cuda.txt").write_text(found["cuda_table"] + "\n")
    per_step = {key: found[key] / args.steps for key in found if key.endswith(("reads", "syncs"))}
    if not cuda:
        per_step["fedit_syncs"] = per_step["bare_syncs"] = None
    return per_step
