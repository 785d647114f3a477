"""The whole attack × defence grid on the tests' tiny Llama: detection and held-out loss.

The embedded-suite grid (``robustness.py``) is too slow for 2 shared cores, so this runs every
cell of {no attack, sign_flip, scale, gaussian, alie, label_flip, backdoor} × {none,
norm_bound, krum, multi_krum, geometric_median, trimmed_mean, median} at 20% and 40% attackers
on the 2-layer Llama of tests/conftest.py (hidden 64, random weights, byte-level tokenizer),
10 clients, 3 rounds of 2 local steps, loss-only evaluation. What it measures is the geometry
of the updates (which defence finds which attacker, and what it costs a clean federation),
not what an attack does to a real model's answers.

    nice -n 10 .venv/bin/python benchmarks/robustness_tiny.py [--fractions 0.2 0.4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, record

from fedit.config import ATTACKS, DEFENCES, load_config
from fedit.experiment import run_experiment
from fedit.reporting.robustness import robustness_summary

sys.path.insert(0, str(ROOT / "tests"))
from conftest import build_tiny_model  # noqa: E402

# Every attack but inflate_count, a forged count that benchmarks/inflate_count.py measures.
GRID_ATTACKS = [kind for kind in ATTACKS[1:] if kind != "inflate_count"]
SETTINGS = [
    "data.synthetic.num_examples=200",
    "data.test_per_category=2",
    "federation.num_clients=10",
    "federation.fraction_fit=1.0",
    "federation.rounds=3",
    "train.local_steps=2",
    "train.batch_size=4",
    "train.micro_batch_size=4",
    "train.lr=3e-3",
    "eval.generate=false",
    "eval.base=false",
    "eval.every=1000",
]


def run_cell(model_dir: Path, out: Path, attack: str, defence: str, fraction: float) -> dict:
    items = [*SETTINGS, f"model.name={model_dir}", f"output_dir={out}", "overwrite=true"]
    items += [f"attack.kind={attack}", f"robust.method={defence}"]
    if attack != "none":
        items.append(f"attack.fraction={fraction}")
    if defence in ("krum", "multi_krum"):
        # f = the number of attackers, at most 3: Krum needs K ≥ 2f + 3 (10 clients).
        items.append(f"robust.num_byzantine={min(round(fraction * 10) or 1, 3)}")
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", items)
    history = run_experiment(cfg).history
    return {"loss": history[-1]["eval"]["loss"], **robustness_summary(history)}


def _cell(result: dict, clean: float) -> str:
    text = f"{result['loss'] - clean:+.3f}"
    if result["recall"] is not None and result["methods"]:
        precision = "–" if result["precision"] is None else f"{result['precision']:.2f}"
        text += f" ({precision}/{result['recall']:.2f})"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.2, 0.4])
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny")
        runs = Path(tmp) / "runs"
        results = {}
        for defence in DEFENCES:
            results[("none", defence, 0.0)] = run_cell(model_dir, runs / "x", "none", defence, 0)
        for fraction in args.fractions:
            for attack in GRID_ATTACKS:
                for defence in DEFENCES:
                    result = run_cell(model_dir, runs / "x", attack, defence, fraction)
                    results[(attack, defence, fraction)] = result
                    print(attack, defence, fraction, _cell(result, 0.0), flush=True)
    clean = results[("none", "none", 0.0)]["loss"]
    header = ["| attack | " + " | ".join(DEFENCES) + " |", "|---|" + "---|" * len(DEFENCES)]
    lines = [*header]
    lines.append(
        "| none | " + " | ".join(_cell(results[("none", d, 0.0)], clean) for d in DEFENCES) + " |"
    )
    for fraction in args.fractions:
        lines += ["", f"{fraction:.0%} attackers:", "", *header]
        for attack in GRID_ATTACKS:
            cells = [_cell(results[(attack, d, fraction)], clean) for d in DEFENCES]
            lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    minutes = (time.perf_counter() - started) / 60
    body = "\n".join(
        [
            "The tests' 2-layer Llama (random weights), 10 clients of the embedded suite "
            "(2 category shards each), 3 rounds of 2 local steps of 4 examples, every client "
            "every round; Krum's f = the number of attackers, at most 3 (K ≥ 2f + 3: at 40%, "
            "4 attackers and f = 3). Each cell: the held-out loss "
            f"minus the clean FedAvg run's ({clean:.3f}; lower is better), and, with an attack "
            "and a defence, (detection precision / recall) over all client rounds. The model is "
            "random, so this measures which defence finds which attacker and what it costs, "
            f"not what attacks do to answers. {len(results)} runs, {minutes:.1f} min.",
            "",
            "No attack:",
            "",
            *lines,
        ]
    )
    record("robustness_tiny", "Attacks × defences, full grid on the tiny model", body)


if __name__ == "__main__":
    main()
