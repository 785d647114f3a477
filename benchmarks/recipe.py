"""Training recipe: the quickstart's held-out loss and accuracy over seeds, one lever at a time.

Each variant is the shipped quickstart with one change; every variant runs with the same seeds
(which fix the data split, client selection and LoRA init), so the paired differences to the
shipped recipe are per seed. Reports the mean with a 95% Student-t interval over seeds
(``fedit.evaluation.intervals``) and the mean paired difference with its interval.

    .venv/bin/python benchmarks/recipe.py [--seeds 42 43 44] [--variants current linear ...]
    .venv/bin/python benchmarks/recipe.py --smoke     # 2 seeds, 1 tiny round, prints only

A finished run (its metrics.jsonl has the last round) is reused, so an interrupted study
resumes; pass --fresh to rerun everything.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import ROOT, record

from fedit.evaluation.intervals import t_interval
from fedit.model.precision import bf16_support_line, native_bf16

# name → overrides on top of configs/quickstart.yaml
VARIANTS: dict[str, list[str]] = {
    "current": [],
    "local lr linear": ["train.local_lr_schedule=linear"],
    "no length grouping": ["train.group_by_length=false"],
    "packing, no grouping": ["train.group_by_length=false", "train.packing=true"],
    "local lr cosine": ["train.local_lr_schedule=cosine"],
    "autocast bf16": ["train.autocast=bf16"],
    "autocast off": ["train.autocast=none"],
    # The quickstart pins model.dtype=fp32; auto stores the frozen base in bf16 where it is native.
    "base dtype auto": ["model.dtype=auto"],
}
# Without native bf16, autocast=auto is already off (so "autocast off" repeats "current") and
# bf16 runs about 19x slower: these run only where bf16 is native, unless named explicitly.
BF16_VARIANTS = ("autocast bf16", "autocast off", "base dtype auto")
# Only the final round's evaluation is read, and the base model is the same for every variant.
FIXED = ["eval.base=false", "eval.every=1000"]
# Makes one run take seconds: the pipeline is checked end to end, the numbers mean nothing.
SMOKE = [
    "federation.num_clients=2",
    "federation.rounds=1",
    "federation.fraction_fit=1.0",
    "train.local_steps=1",
    "train.batch_size=2",
    "train.micro_batch_size=2",
    "train.cutoff_len=64",
    "data.synthetic.num_examples=60",
    "data.test_per_category=1",
    "eval.max_new_tokens=4",
    "eval.base=false",
]
METRICS = ("loss", "accuracy")


def run_variant(
    name: str, seed: int, out: Path, extra: list[str], fresh: bool
) -> tuple[dict, float]:
    """One quickstart run; returns its last round's eval and wall seconds (0 when reused)."""
    run_dir = out / name.replace(" ", "_").replace(",", "") / f"seed-{seed}"
    metrics = run_dir / "metrics.jsonl"
    if not fresh and metrics.is_file():
        history = [json.loads(line) for line in metrics.open()]
        last = history[-1]
        if last.get("eval") and "accuracy" in last["eval"]:
            return last["eval"], 0.0
    fedit = Path(sys.executable).with_name("fedit")
    command = [str(fedit), "run", "configs/quickstart.yaml", f"seed={seed}"]
    command += [f"output_dir={run_dir}", "overwrite=true", *FIXED, *VARIANTS[name], *extra]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    history = [json.loads(line) for line in metrics.open()]
    return history[-1]["eval"], time.perf_counter() - started


def summarize(results: dict[str, dict[int, dict]], seeds: list[int]) -> str:
    """Markdown table: mean ± interval per metric, and the paired difference to current."""
    lines = [
        "| variant | held-out loss | Δ loss vs current | accuracy | Δ accuracy vs current |",
        "|---|---|---|---|---|",
    ]
    for name, by_seed in results.items():
        cells = []
        for metric in METRICS:
            values = [by_seed[s][metric] for s in seeds]
            cells.append(_interval(values))
            if name == "current" or "current" not in results:
                cells.append("–")
            else:
                diffs = [by_seed[s][metric] - results["current"][s][metric] for s in seeds]
                cells.append(_interval(diffs, signed=True))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _interval(values: list[float], signed: bool = False) -> str:
    interval = t_interval(values)
    sign = "+" if signed else ""
    return f"{interval.mean:{sign}.4f} [{interval.low:{sign}.4f}, {interval.high:{sign}.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS))
    parser.add_argument("--output-dir", default="runs/bench_recipe")
    parser.add_argument("--smoke", action="store_true", help="tiny runs, 2 seeds, print only")
    parser.add_argument("--fresh", action="store_true", help="rerun finished runs too")
    parser.add_argument(
        "--section",
        help="write to its own section of docs/benchmarks.md (a study of a few variants), "
        "leaving the full recipe table as it is",
    )
    args = parser.parse_args()
    native = native_bf16(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    skipped = [] if native or args.variants else list(BF16_VARIANTS)
    args.variants = args.variants or [name for name in VARIANTS if name not in skipped]
    extra = SMOKE if args.smoke else []
    seeds = args.seeds[:2] if args.smoke else args.seeds
    out = ROOT / (args.output_dir + ("_smoke" if args.smoke else ""))
    results: dict[str, dict[int, dict]] = {}
    seconds: dict[str, list[float]] = {}
    for name in args.variants:
        results[name], seconds[name] = {}, []
        for seed in seeds:
            evaluation, took = run_variant(name, seed, out, extra, args.fresh or args.smoke)
            results[name][seed] = evaluation
            seconds[name].append(took)
            print(f"{name}, seed {seed}: loss {evaluation['loss']:.4f}, "
                  f"accuracy {evaluation['accuracy']:.3f} ({took:.0f} s)", flush=True)  # fmt: skip
    body = "\n".join(
        [
            f"The quickstart (`configs/quickstart.yaml`) with one change each, seeds {seeds}; "
            "final round's held-out loss and exact-match accuracy, mean [95% t-interval over "
            "seeds]; Δ is the paired difference to the shipped recipe, seed by seed.",
            "",
            summarize(results, seeds),
        ]
    )
    if skipped:
        body += (
            f"\n\nNot run here ({bf16_support_line(torch.device('cpu'))}): "
            + ", ".join(skipped)
            + ". `train.autocast=auto` is fp32 on this machine, so the shipped recipe already "
            "runs without autocast, and bf16 would run about 19x slower."
        )
    if args.smoke:
        print(body)
        return
    body += "\n\nSeconds per run: " + ", ".join(
        f"{name} " + " / ".join(f"{t:.0f}" for t in times) for name, times in seconds.items()
    )
    if args.section:
        record(f"recipe-{args.section}", f"Training recipe over seeds: {args.section}", body)
    else:
        record("recipe", "Training recipe over seeds", body)


if __name__ == "__main__":
    main()
