"""Every strategy on the embedded suite with a non-IID split: accuracy per category and bytes.

Each strategy runs the quickstart experiment (SmolLM2-135M, 8 clients holding 2 category
shards each, 4 rounds, 4 clients per round) with the same seed, data split and client
selection; only ``strategy.name`` (and the variants' own settings) differ. The held-out set is
scored once at the end of each run and once for the base model.

    .venv/bin/python benchmarks/strategies.py                  # all strategies (~45 min)
    .venv/bin/python benchmarks/strategies.py --only fedavg exact
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import ROOT, record

from fedit.config import load_config
from fedit.experiment import run_experiment
from fedit.reporting.report import communication_summary

# (label, overrides): one row per variant, in the order of docs/strategies.md.
VARIANTS: list[tuple[str, list[str]]] = [
    ("fedavg", ["strategy.name=fedavg"]),
    ("fedprox", ["strategy.name=fedprox"]),
    ("fedavgm", ["strategy.name=fedavgm"]),
    ("fedadam", ["strategy.name=fedadam"]),
    ("fedyogi", ["strategy.name=fedyogi"]),
    ("fedadagrad", ["strategy.name=fedadagrad"]),
    ("scaffold", ["strategy.name=scaffold"]),
    ("ffa_lora", ["strategy.name=ffa_lora"]),
    ("exact", ["strategy.name=exact"]),
    ("exact, ranks 4/8/16", ["strategy.name=exact", "lora.client_ranks=[4,8,16]"]),
    ("fedavg, int8 uploads", ["strategy.name=fedavg", "federation.upload_compression=int8"]),
]


def run_variant(label: str, overrides: list[str], base: bool, out: Path) -> dict:
    """Run one variant; return its final evaluation, communication totals and wall time."""
    cfg = load_config(
        ROOT / "configs" / "quickstart.yaml",
        [
            *overrides,
            f"output_dir={out}",
            "overwrite=true",
            "eval.every=1000",  # only the last round (and the base model, once) is scored
            f"eval.base={str(base).lower()}",
        ],
    )
    started = time.perf_counter()
    outcome = run_experiment(cfg)
    return {
        "label": label,
        "base": outcome.history[0]["eval"] if base else None,
        "final": outcome.history[-1]["eval"],
        "communication": communication_summary(outcome.history),
        "seconds": time.perf_counter() - started,
    }


def table(results: list[dict]) -> str:
    """One markdown row per variant: accuracy overall and per category, loss, MB moved."""
    categories = sorted(results[0]["final"]["accuracy_by_category"])
    lines = [
        "| strategy | accuracy | loss | "
        + " | ".join(categories)
        + " | MB up | MB down | minutes |",
        "|---|---|---|" + "---|" * len(categories) + "---|---|---|",
    ]
    base = next((r["base"] for r in results if r["base"]), None)
    rows = ([("base model", base, None, None)] if base else []) + [
        (r["label"], r["final"], r["communication"], r["seconds"]) for r in results
    ]
    for label, ev, comm, seconds in rows:
        cells = [f"{ev['accuracy_by_category'].get(c, 0):.2f}" for c in categories]
        moved = ["–", "–", "–"]
        if comm:
            up, down = comm["bytes_up"] / 1e6, comm["bytes_down"] / 1e6
            moved = [f"{up:.1f}", f"{down:.1f}", f"{seconds / 60:.1f}"]
        lines.append(
            f"| {label} | **{ev['accuracy']:.3f}** | {ev['loss']:.3f} | "
            + " | ".join(cells + moved)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="labels of the variants to run")
    parser.add_argument("--output-dir", default="runs/bench_strategies")
    parser.add_argument(
        "--resume", action="store_true", help="keep the variants already in results.json"
    )
    args = parser.parse_args()
    variants = [v for v in VARIANTS if not args.only or v[0] in args.only]
    results_file = ROOT / args.output_dir / "results.json"
    results = json.loads(results_file.read_text()) if args.resume else []
    done = {r["label"] for r in results}
    for label, overrides in variants:
        if label in done:
            continue
        out = ROOT / args.output_dir / label.replace(" ", "_").replace(",", "").replace("/", "-")
        print(f"== {label}", flush=True)
        results.append(run_variant(label, overrides, base=not results, out=out))
        results_file.write_text(json.dumps(results, indent=1))
    body = (
        "Quickstart experiment (8 clients, 2 category shards each, 4 rounds, 4 clients per "
        "round, 6 local steps of 8 examples), one run per row, same seed and split. Accuracy is "
        "exact match on the 90 held-out examples after the last round; MB are the serialised "
        "bytes over the whole run.\n\n" + table(results)
    )
    record("strategies", "Strategies on the non-IID embedded suite", body)


if __name__ == "__main__":
    main()
