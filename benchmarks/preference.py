"""FedDPO after instruction tuning: reward and exact-answer accuracy, and DPO's cost per round.

Three phases, written to docs/benchmarks.md ("preference"):

1. the starting adapter: the quickstart's instruction tuning (or ``--start PATH``, e.g. an
   existing ``runs/quickstart/global_adapter``);
2. ``fedit compare configs/dpo.yaml`` from that adapter: base, start, Local-k DPO, FedDPO and
   Centralized DPO, scored on the held-out pairs (``preference`` suite);
3. one round's local training of the same clients, same steps, side by side: SFT on their
   instructions against DPO on their pairs (time per round, and its ratio).

At the shipped configs' size by default (the quickstart's 4 rounds, then configs/dpo.yaml: 4
rounds, 90 held-out pairs, Local-3), about an hour on an idle 2-core machine; ``--scaled`` applies
the overrides below (about 25 minutes on a shared machine). Pass more as ``--sft KEY=VALUE`` /
``--dpo KEY=VALUE``:

    .venv/bin/python benchmarks/preference.py --start runs/quickstart/global_adapter
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from common import ROOT, record

from fedit.client.fit import objective_loss
from fedit.client.train import train_local
from fedit.config import Config, load_config
from fedit.data.prepare import prepare_data
from fedit.evaluation.compare import run_compare
from fedit.experiment import load_setup, run_experiment
from fedit.reporting.summary import category_table
from fedit.strategy.selection import client_seed

SFT_SCALE = [
    "federation.rounds=2",
    "train.local_steps=4",
    "eval.base=false",
    "eval.generate=false",
]
DPO_SCALE = [
    "federation.rounds=2",
    "train.local_steps=2",
    "train.batch_size=4",
    "train.micro_batch_size=4",
    "data.test_per_category=2",
    "eval.base=false",
    "eval.every=2",
    "eval.batch_size=18",
    "eval.max_new_tokens=12",
    "compare.num_local=1",
]
TIMED_CLIENTS = (0, 1)


def _round_seconds(cfg: Config, objective: str) -> tuple[float, int]:
    """Local training seconds and tokens of TIMED_CLIENTS, one round, under ``objective``."""
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, objective=objective))
    setup = load_setup(cfg, prepare_data(cfg))
    model, start = setup.server.model, setup.server.initial_state()
    seconds, tokens = 0.0, 0
    for client in TIMED_CLIENTS:
        update = train_local(
            model,
            setup.client_data[client],
            cfg.train,
            client_id=client,
            lr=cfg.train.lr,
            seed=client_seed(cfg.seed, 1, client),
            global_state=start,
            step_loss=objective_loss(model, cfg),
        )
        seconds += update.metrics["seconds"]
        tokens += update.metrics["tokens"]
    return seconds, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--start", help="starting adapter (default: train it, phase 1)")
    parser.add_argument("--output-dir", default="runs/bench_preference")
    parser.add_argument("--sft", nargs="*", default=[], help="overrides of the SFT phase")
    parser.add_argument("--dpo", nargs="*", default=[], help="overrides of the DPO phase")
    parser.add_argument("--note", default="", help="a remark for the write-up (load, provenance)")
    parser.add_argument("--scaled", action="store_true", help="the scaled-down overrides")
    args = parser.parse_args()
    sft_scale = SFT_SCALE if args.scaled else []
    dpo_scale = DPO_SCALE if args.scaled else []
    out = ROOT / args.output_dir
    started = time.perf_counter()
    start = args.start
    made = f"the quickstart's instruction tuning with `{' '.join(sft_scale + args.sft)}`"
    if start is None:
        sft = load_config(
            ROOT / "configs" / "quickstart.yaml",
            [f"output_dir={out / 'sft'}", "overwrite=true", *sft_scale, *args.sft],
        )
        start = str(run_experiment(sft).run_dir / "global_adapter")
    sft_minutes = (time.perf_counter() - started) / 60
    dpo = load_config(
        ROOT / "configs" / "dpo.yaml",
        [f"model.adapter={start}", f"output_dir={out / 'dpo'}", "overwrite=true"]
        + [*dpo_scale, *args.dpo],
    )
    outcome = run_compare(dpo)
    sft_s, sft_tokens = _round_seconds(dpo, "sft")
    dpo_s, dpo_tokens = _round_seconds(dpo, "dpo")
    rows = [(name, result["preference"]) for name, result in outcome.results.items()]
    steps = dpo.train.local_steps
    overrides = " ".join(dpo_scale + args.dpo)
    settings = f"with `{overrides}`" if overrides else "as shipped"
    body = "\n".join(
        [
            "On the embedded suite with SmolLM2-135M-Instruct. Starting adapter: "
            + (f"`{start}`" if args.start else f"{made} ({sft_minutes:.1f} min)")
            + ", then "
            f"`fedit compare configs/dpo.yaml` {settings} ({outcome.seconds / 60:.1f} min). "
            "Implicit "
            "rewards use the base model as reference, so the base row is 0 by definition.",
            "",
            "Held-out reward accuracy (share of pairs where the chosen answer's implicit "
            "reward beats the rejected one's):",
            "",
            *category_table(rows, "reward_accuracy", "reward_accuracy_by_category"),
            "",
            "Exact-answer accuracy of greedy answers on the same held-out instructions:",
            "",
            *category_table(rows, "accuracy", "accuracy_by_category"),
            "",
            "Mean reward margin:",
            "",
            *category_table(rows, "reward_margin", "reward_margin_by_category"),
            "",
            f"Local training of clients {list(TIMED_CLIENTS)} for one round of {steps} steps "
            f"of {dpo.train.batch_size} (same clients, same instructions, same seeds), run "
            f"side by side in this script: SFT {sft_s:.1f} s ({sft_tokens:,} tokens), DPO "
            f"{dpo_s:.1f} s ({dpo_tokens:,} tokens, chosen and rejected): **DPO / SFT = "
            f"{dpo_s / sft_s:.2f}x** time per round.",
            *(["", args.note] if args.note else []),
        ]
    )
    record("preference", "FedDPO after instruction tuning", body)


if __name__ == "__main__":
    main()
