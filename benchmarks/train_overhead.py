"""Training speed: fedit's levers, each on its own and as shipped, against a bare peft loop.

Every loop trains the same LoRA adapter from the same start on the same client's examples, one
local epoch (so each loop sees every example once), and the table gives trained (non-padding)
tokens per second as a ratio to the baseline: a bare peft loop in fp32 that asks the model for
its own loss over full logits, unpadded order (what an HF Trainer does, and what Shepherd runs).
Loops run interleaved, after one untimed warm-up each (torch.compile compiles there).

Targets (issue 18): 3x the baseline on a machine with native bf16, 1.5x on an fp32-only one.

    .venv/bin/python benchmarks/train_overhead.py [--repeats 3] [--profile]
    .venv/bin/python benchmarks/train_overhead.py --smoke      # 2 tiny steps, prints only

``--profile`` also runs one local run of the shipped defaults under torch.profiler and prints
its top operators by self CPU time (and CUDA time on a GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from common import ROOT, record

from fedit.client.batching import batch_indices, collate
from fedit.client.train import model_device, train_local
from fedit.config import Config, TrainConfig, load_config
from fedit.data.prepare import prepare_data
from fedit.data.templates import tokenize_examples
from fedit.model.loading import load_model
from fedit.model.lora import apply_lora, get_adapter_state, set_adapter_state
from fedit.model.precision import bf16_support_line, native_bf16

TARGET_NATIVE_BF16, TARGET_FP32 = 3.0, 1.5
# fedit with every lever off: fp32 weights and compute, batches in random order, eager.
PLAIN = {"autocast": "none", "group_by_length": False, "packing": False, "compile": False}
# name → (model.dtype, train overrides on top of PLAIN); "shipped" uses the config as it is.
LEVERS: dict[str, tuple[str, dict[str, Any]]] = {
    "fedit, no lever (fp32, eager, unsorted)": ("fp32", {}),
    "bf16 frozen base (model.dtype=bf16)": ("bf16", {}),
    "autocast bf16 (train.autocast=bf16)": ("fp32", {"autocast": "bf16"}),
    "torch.compile (train.compile=true)": ("fp32", {"compile": True}),
    "packing (train.packing=true)": ("fp32", {"packing": True}),
    "length grouping (train.group_by_length=true)": ("fp32", {"group_by_length": True}),
    "length grouping + torch.compile": ("fp32", {"group_by_length": True, "compile": True}),
    "every lever on auto (dtype, autocast, compile auto; packing)": (
        "auto",
        {"autocast": "auto", "compile": "auto", "packing": True},
    ),
}
SHIPPED = "fedit as shipped (the config's model.dtype and train.*)"
BASELINE = "bare peft loop, fp32, full logits (HF Trainer / Shepherd)"


def bare_loop(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], lr: float) -> None:
    """Forward with labels (the model's own loss over full logits), backward, AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    device = model_device(model)
    model.train()
    for batch in batches:
        model(**{k: v.to(device) for k, v in batch.items()}).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def _models(cfg: Config, dtypes: set[str]) -> dict[str, torch.nn.Module]:
    """One peft model per base dtype, each with the same seeded LoRA init."""
    models = {}
    for dtype in sorted(dtypes):
        base, _ = load_model(dataclasses.replace(cfg.model, dtype=dtype))
        models[dtype] = apply_lora(base, cfg.lora, seed=cfg.seed)
    return models


def _needs_bf16(dtype: str, overrides: dict[str, Any]) -> bool:
    return dtype == "bf16" or overrides.get("autocast") == "bf16"


def _loops(
    cfg: Config, examples: list[Any], pad_token_id: int, levers: dict[str, tuple[str, dict]]
) -> dict[str, Callable[[], int]]:
    """Each loop as a call that trains one epoch and returns the real tokens it trained."""
    wanted = {dtype for dtype, _ in levers.values()} | {cfg.model.dtype, "fp32"}
    models = _models(cfg, wanted)
    start = get_adapter_state(models["fp32"])
    order = batch_indices(
        [len(e.input_ids) for e in examples], cfg.train.batch_size, seed=0, group_by_length=False
    )
    batches = [collate([examples[i] for i in idx], pad_token_id) for idx in order]
    bare_tokens = sum(int(b["attention_mask"].sum()) for b in batches)

    def bare() -> int:
        set_adapter_state(models["fp32"], start)
        bare_loop(models["fp32"], batches, cfg.train.lr)
        return bare_tokens

    def fedit(dtype: str, train: TrainConfig) -> Callable[[], int]:
        def run() -> int:
            model = models[dtype]
            set_adapter_state(model, start)
            update = train_local(model, examples, train, client_id=0, lr=cfg.train.lr, seed=0)
            return int(update.metrics["tokens"])

        return run

    loops = {BASELINE: bare}
    for name, (dtype, overrides) in levers.items():
        loops[name] = fedit(dtype, dataclasses.replace(cfg.train, **{**PLAIN, **overrides}))
    loops[SHIPPED] = fedit(cfg.model.dtype, cfg.train)
    return loops


def measure(
    loops: dict[str, Callable[[], int]], repeats: int
) -> tuple[dict[str, tuple[float, int]], dict[str, float]]:
    """Median seconds and tokens per loop, interleaved so load drift hits all alike; and each
    loop's warm-up seconds (first-call allocations and, for torch.compile, compilation)."""
    warmup: dict[str, float] = {}
    for name, run in loops.items():
        started = time.perf_counter()
        run()
        warmup[name] = time.perf_counter() - started
    times: dict[str, list[float]] = {name: [] for name in loops}
    tokens: dict[str, int] = {}
    for _ in range(repeats):
        for name, run in loops.items():
            started = time.perf_counter()
            tokens[name] = run()
            times[name].append(time.perf_counter() - started)
    return {name: (statistics.median(times[name]), tokens[name]) for name in loops}, warmup


def profile_round(cfg: Config, examples: list[Any], rows: int = 15) -> str:
    """Top operators of one local run of the shipped defaults (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    base, _ = load_model(cfg.model)
    model = apply_lora(base, cfg.lora, seed=cfg.seed)
    activities = [ProfilerActivity.CPU]
    sort_by = "self_cpu_time_total"
    if torch.cuda.is_available() and model_device(model).type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        sort_by = "self_cuda_time_total"
    train_local(model, examples, cfg.train, client_id=0, lr=cfg.train.lr, seed=0)  # warm-up
    with profile(activities=activities) as prof:
        train_local(model, examples, cfg.train, client_id=0, lr=cfg.train.lr, seed=0)
    return prof.key_averages().table(sort_by=sort_by, row_limit=rows)


def _device(cfg: Config) -> torch.device:
    on_gpu = cfg.model.device != "cpu" and torch.cuda.is_available()
    return torch.device("cuda" if on_gpu else "cpu")


def report(
    cfg: Config,
    results: dict[str, tuple[float, int]],
    warmup: dict[str, float],
    repeats: int,
    skipped: list[str],
) -> str:
    """The markdown table of tokens/s and ratios to the baseline."""
    device = _device(cfg)
    support, native = bf16_support_line(device), native_bf16(device)
    target = TARGET_NATIVE_BF16 if native else TARGET_FP32
    base_seconds, base_tokens = results[BASELINE]
    base_rate = base_tokens / base_seconds
    lines = [
        f"Model `{cfg.model.name}`, LoRA r={cfg.lora.r} on {cfg.lora.target_modules}, client 0's "
        f"{results[BASELINE][1]:,} tokens in one epoch of batches of {cfg.train.batch_size}, "
        f"median of {repeats} interleaved repeats after a warm-up.",
        f"bf16 support: {support}.",
        "",
        "| loop | seconds | trained tokens/s | ratio to the bare loop | warm-up run (s) |",
        "|---|---|---|---|---|",
    ]
    for name, (seconds, tokens) in results.items():
        rate = tokens / seconds
        lines.append(
            f"| {name} | {seconds:.2f} | {rate:.0f} | {rate / base_rate:.2f}x "
            f"| {warmup[name]:.1f} |"
        )
    for name in skipped:
        lines.append(f"| {name} | not run: no native bf16 here (`--all-levers` runs it) | | | |")
    shipped = (results[SHIPPED][1] / results[SHIPPED][0]) / base_rate
    verdict = "met" if shipped >= target else "missed"
    lines += ["", f"Shipped defaults: **{shipped:.2f}x** (target ≥ {target}x here: {verdict})."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print a round's top operators")
    parser.add_argument(
        "--all-levers",
        action="store_true",
        help="also run the bf16 levers where bf16 is not native (about 19x slower on AVX2)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="WORD",
        help="run only the levers whose name contains one of these words (besides the bare "
        "loop and the shipped defaults); recorded as a follow-up section",
    )
    parser.add_argument("--smoke", action="store_true", help="2 tiny steps, 1 repeat, print only")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args()
    overrides = ["train.local_steps=null", "train.local_epochs=1", "lora.dropout=0"]
    if args.smoke:  # 2 steps of 2 short examples: checks every loop runs, measures nothing
        overrides += ["train.batch_size=2", "train.micro_batch_size=2", "train.cutoff_len=48"]
    cfg = load_config(args.config, overrides + args.overrides)
    cfg.train.micro_batch_size = cfg.train.batch_size  # one forward per step in every loop
    data = prepare_data(cfg)
    tokenizer = load_model(cfg.model)[1]
    rows = [data.train[i] for i in data.parts[0]]
    if args.smoke:
        rows = rows[: 2 * cfg.train.batch_size]
        args.repeats = 1
    examples, _ = tokenize_examples(rows, tokenizer, cfg.data.template, cfg.train.cutoff_len)
    native = native_bf16(_device(cfg))
    skipped = [
        name
        for name, (dtype, overrides) in LEVERS.items()
        if not (native or args.all_levers) and _needs_bf16(dtype, overrides)
    ]
    levers = {name: lever for name, lever in LEVERS.items() if name not in skipped}
    if args.only:
        levers = {n: lever for n, lever in levers.items() if any(w in n for w in args.only)}
        skipped = []
    results, warmup = measure(_loops(cfg, examples, tokenizer.pad_token_id, levers), args.repeats)
    body = report(cfg, results, warmup, args.repeats, skipped)
    if args.profile:
        body += "\n\nTop operators of one local run (shipped defaults):\n\n```\n"
        body += profile_round(cfg, examples) + "\n```"
    if args.smoke:
        print(body)
        return
    if args.only:
        record("overhead_followup", "Training speed: follow-up on chosen levers", body)
        return
    record("overhead", "Training speed: levers against a bare peft loop", body)


if __name__ == "__main__":
    main()
