"""``fedit compare`` on the quickstart from scratch: wall time per phase and the result table.

The issue's target is 25 minutes or less on the 2-core machine, with FedIT trained too (a
finished ``make run`` would be reused and save its share). Run it on an idle machine:

    .venv/bin/python benchmarks/compare.py               # about 20 min
"""

from __future__ import annotations

import argparse

from common import ROOT, record

from fedit.config import load_config
from fedit.evaluation.compare import run_compare
from fedit.reporting.summary import category_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", default="runs/bench_compare")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides")
    args = parser.parse_args()
    cfg = load_config(
        ROOT / "configs" / "quickstart.yaml",
        [f"output_dir={ROOT / args.output_dir}", "overwrite=true", *args.overrides],
    )
    outcome = run_compare(cfg)
    phases = outcome.phases
    names = list(outcome.results)
    rows = [(name, outcome.results[name]["heldout"]) for name in names]
    body = "\n".join(
        [
            "`fedit compare configs/quickstart.yaml` from an empty output folder: FedIT (8 "
            "clients, 4 rounds, held-out evaluation every round), then Local-k (k = 3, each "
            "on its FedIT step budget) and Centralized (FedIT's total steps), then every "
            "model scored on the 90 held-out examples.",
            "",
            f"**Total: {outcome.seconds / 60:.1f} min** (target: 25 min or less). FedIT "
            f"{phases['fedit'] / 60:.1f} min, baselines {phases['baselines'] / 60:.1f} min, "
            f"scoring {len(names)} models {phases['scoring'] / 60:.1f} min.",
            "",
            "Exact-answer accuracy on the held-out set:",
            "",
            *category_table(rows, "accuracy", "accuracy_by_category"),
            "",
            "Held-out loss:",
            "",
            *category_table(rows, "loss", "loss_by_category"),
        ]
    )
    record("compare", "fedit compare on the quickstart", body)


if __name__ == "__main__":
    main()
