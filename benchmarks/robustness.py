"""Attacks × defences on the embedded suite with 10 clients: held-out loss, accuracy, backdoor ASR.

The issue's grid is {no attack, sign_flip, scale, alie, label_flip, backdoor} × {none,
norm_bound, krum, multi_krum, geometric_median, trimmed_mean, median} × {20%, 40% attackers}:
84 runs. At quickstart size a run takes minutes on 2 CPU cores, so this script runs a
scaled-down experiment (``SCALED`` below: 2 rounds of 2 local steps, every client every round,
a small test set) and only the cells named by ``--cells`` (default ``CELLS``); the write-up in
docs/benchmarks.md marks every other cell "not measured". Each run caches its result in
``runs/bench_robustness/cells/``, so ``--resume`` only runs what is missing, and ``--shard I/N``
splits what is missing between N workers (on 2 cores, 2 workers of 1 thread each ran nearly
twice as many cells per hour as one of 2 threads: the clients' steps are small).

In 2 rounds of 2 steps a backdoor never takes (ASR 0 everywhere, undefended too), so
``--study backdoor`` runs the backdoor row alone with longer local training (``BACKDOOR``: 3
rounds of 8 steps, attackers poisoning all their examples) next to a clean control, measures
every cell's ASR, and writes its own section; its cells are cached apart from the grid's.

    nice -n 10 .venv/bin/python benchmarks/robustness.py [--resume] [--all | --cells none/none/0]
    .venv/bin/python benchmarks/robustness.py --resume --all --shard 0/2 --threads 1 &
    .venv/bin/python benchmarks/robustness.py --resume --all --shard 1/2 --threads 1
    .venv/bin/python benchmarks/robustness.py --study backdoor --resume --shard 0/2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from common import ROOT, record

from fedit.client.attacks import backdoor_success_rate
from fedit.config import ATTACKS, DEFENCES, load_config
from fedit.experiment import run_experiment
from fedit.model.lora import set_adapter_state
from fedit.reporting.robustness import robustness_summary

OUT = ROOT / "runs" / "bench_robustness"
CLIENTS = 10
SCALED = [
    f"federation.num_clients={CLIENTS}",
    "federation.fraction_fit=1.0",
    "federation.rounds=2",
    "train.local_steps=2",
    "train.batch_size=4",
    "train.micro_batch_size=4",
    "train.cutoff_len=128",
    "data.synthetic.num_examples=600",
    "data.test_per_category=3",
    "eval.every=1000",
    "eval.base=false",
    "eval.max_new_tokens=12",
]
# Long enough for a trigger to take: in the grid's 2 × 2 steps the backdoor's ASR stayed 0.
BACKDOOR = [
    *(item for item in SCALED if not item.startswith(("federation.rounds", "train.local_steps"))),
    "federation.rounds=3",
    "train.local_steps=8",
    "attack.poison_fraction=1.0",
]
# The rows: every attack but gaussian (a random update of an honest norm) and
# inflate_count (a forged count, measured on its own by benchmarks/inflate_count.py).
ROWS = [kind for kind in ATTACKS if kind not in ("gaussian", "inflate_count")]
# attack/defence/fraction ("none/.../0" is the clean federation).
CELLS = [
    "none/none/0",
    "sign_flip/none/0.2",
    "sign_flip/krum/0.2",
    "sign_flip/geometric_median/0.2",
]


def all_cells() -> list[str]:
    """The whole grid, most telling first: the clean row, then 20%, then 40% attackers."""
    cells = [f"none/{defence}/0" for defence in DEFENCES]
    for fraction in ("0.2", "0.4"):
        cells += [
            f"{attack}/{d}/{fraction}" for attack in ROWS if attack != "none" for d in DEFENCES
        ]
    return cells


def backdoor_cells() -> list[str]:
    """The clean control, the backdoor against every defence at 40% and 20%, then every
    defence without an attacker (what it costs a clean federation trained this long)."""
    backdoor = [f"backdoor/{d}/{f}" for f in ("0.4", "0.2") for d in DEFENCES]
    return ["none/none/0", *backdoor, *(f"none/{d}/0" for d in DEFENCES if d != "none")]


@dataclass(frozen=True)
class Study:
    """One set of cells run at one setting, cached in its own folder, written to one section."""

    settings: list[str]
    cells: list[str]
    cache: Path  # one JSON file per finished cell
    runs: Path  # the cells' run directories
    every_asr: bool  # measure the trigger's ASR in every cell, not only the backdoor's


STUDIES = {
    "grid": Study(SCALED, all_cells(), OUT / "cells", OUT, every_asr=False),
    "backdoor": Study(
        BACKDOOR, backdoor_cells(), OUT / "backdoor", OUT / "backdoor_runs", every_asr=True
    ),
}


def krum_f(fraction: str) -> int:
    """Krum's f: the number of attackers, at most (K − 3) // 2 = 3, as Krum needs K ≥ 2f + 3."""
    return min(max(1, round(float(fraction) * CLIENTS)), (CLIENTS - 3) // 2)


def overrides(cell: str, settings: list[str]) -> list[str]:
    attack, defence, fraction = cell.split("/")
    items = [*settings, f"robust.method={defence}", f"attack.kind={attack}"]
    if attack != "none":
        items.append(f"attack.fraction={fraction}")
    if defence in ("krum", "multi_krum"):
        items.append(f"robust.num_byzantine={krum_f(fraction)}")
    return items


def attack_success_rate(outcome, cfg) -> float:
    """The final global adapter's backdoor ASR, on answers of 8 tokens (room for the target)."""
    server = outcome.setup.server
    set_adapter_state(server.model, server.load_adapter(outcome.run_dir / "global_adapter"))
    return backdoor_success_rate(
        server.model,
        server.tokenizer,
        server.test_examples,
        cfg.attack,
        cfg.data.template,
        8,
        cfg.eval.batch_size,
    )


def run_cell(cell: str, study: Study) -> dict:
    out = study.runs / cell.replace("/", "_")
    items = [*overrides(cell, study.settings), f"output_dir={out}", "overwrite=true"]
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", items)
    started = time.perf_counter()
    outcome = run_experiment(cfg)
    final = outcome.history[-1]["eval"]
    result = {
        "cell": cell,
        "loss": final["loss"],
        "accuracy": final.get("accuracy"),
        "detection": robustness_summary(outcome.history),
        "seconds": time.perf_counter() - started,
    }
    if study.every_asr or cfg.attack.kind == "backdoor":
        result["asr"] = attack_success_rate(outcome, cfg)
    return result


def _cell_text(result: dict | None) -> str:
    if result is None:
        return "not measured"
    text = f"{result['loss']:.3f} / {result['accuracy']:.2f}"
    if "asr" in result:
        text += f" / ASR {result['asr']:.2f}"
    detection = result["detection"]
    if detection["recall"] is not None and detection["methods"]:
        text += f" (P {_ratio(detection['precision'])}, R {_ratio(detection['recall'])})"
    return text


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def write_grid(results: dict[str, dict]) -> None:
    lines = []
    for fraction in ("0.2", "0.4"):
        lines += [
            f"Attackers {float(fraction):.0%} (2 of 10 clients at 20%, 4 at 40%); each cell: "
            "held-out loss / accuracy (/ backdoor ASR) (detection precision, recall):",
            "",
            "| attack | " + " | ".join(DEFENCES) + " |",
            "|---|" + "---|" * len(DEFENCES),
        ]
        for attack in ROWS:
            frac = "0" if attack == "none" else fraction
            cells = [_cell_text(results.get(f"{attack}/{d}/{frac}")) for d in DEFENCES]
            lines.append(f"| {attack} | " + " | ".join(cells) + " |")
        lines.append("")
    _write(
        "robustness",
        "Attacks and defences on the embedded suite (scaled down)",
        "Scaled down from the issue's grid (84 runs of the quickstart would take hours on 2 "
        "cores): SmolLM2-135M, 10 clients (2 category shards each), **2 rounds of 2 local "
        "steps of 4 examples**, every client every round, 27 held-out examples (3 per "
        "category), answers of at most 12 tokens; the backdoor's ASR is greedy answers (8 "
        "tokens) to the 27 test prompts with the trigger, counted when they contain the "
        "target. Attackers are drawn from the seed (`attack.fraction`); krum and multi_krum "
        f"use f = the number of attackers, at most {krum_f('1')} (Krum needs K ≥ 2f + 3: "
        f"at 40%, f = {krum_f('0.4')} for 4 attackers). With this little training, "
        "accuracy stays near the base model's 0.000: compare the held-out loss.",
        lines,
        results,
    )


def write_backdoor(results: dict[str, dict]) -> None:
    clean = results.get("none/none/0")
    columns = ("backdoor/{}/0.4", "backdoor/{}/0.2", "none/{}/0")
    lines = [
        "| defence | backdoor, 40% attackers | backdoor, 20% attackers | no attacker |",
        "|---|---|---|---|",
        *(
            f"| {d} | "
            + " | ".join(_cell_text(results.get(column.format(d))) for column in columns)
            + " |"
            for d in DEFENCES
        ),
    ]
    _write(
        "robustness_backdoor",
        "Backdoor against each defence (embedded suite, longer)",
        "The grid above trains too little for a trigger to take. Here the backdoor row runs "
        "alone, longer: the grid's setting but **3 rounds of 8 local steps**, and attackers "
        "poisoning every example they train on (`attack.poison_fraction=1.0`; trigger "
        '"cf", target "ACCESS GRANTED"). ASR: greedy answers (8 tokens) to the 27 held-out '
        "prompts with the trigger in front, counted when they contain the target; the "
        "clean federation (no attacker, no defence: "
        + ("not measured" if clean is None else _cell_text(clean))
        + ") is the control, and its row shows what each defence costs when nobody attacks.",
        ["Each cell: held-out loss / accuracy / ASR (detection precision, recall):", "", *lines],
        results,
    )


def _write(section: str, title: str, intro: str, table: list[str], results: dict) -> None:
    minutes = sum(r["seconds"] for r in results.values()) / 60
    runs = f" {len(results)} runs, {minutes:.0f} min in all (a sum of per-run times)."
    record(section, title, "\n".join([intro + runs, "", *table]))


def _cached(study: Study) -> dict[str, dict]:
    """Every finished cell: one JSON file each, so parallel workers never overwrite each other."""
    legacy = OUT / "results.json"  # the grid's single cache file of earlier versions
    results = json.loads(legacy.read_text()) if legacy.is_file() and study.runs == OUT else {}
    for path in sorted(study.cache.glob("*.json")):
        result = json.loads(path.read_text())
        results[result["cell"]] = result
    return results


def _store(result: dict, study: Study) -> None:
    study.cache.mkdir(parents=True, exist_ok=True)
    path = study.cache / f"{result['cell'].replace('/', '_')}.json"
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(result, indent=1))
    partial.replace(path)  # atomic: a killed worker leaves no half-written cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--study", choices=sorted(STUDIES), default="grid")
    parser.add_argument(
        "--cells", nargs="*", help=f"attack/defence/fraction; the grid's default: {CELLS}"
    )
    parser.add_argument("--resume", action="store_true", help="keep results already cached")
    parser.add_argument(
        "--all", action="store_true", help="every cell of the study (grid: 77, the clean row once)"
    )
    parser.add_argument(
        "--write-only", action="store_true", help="write the section from the cache, run nothing"
    )
    parser.add_argument(
        "--shard",
        default="0/1",
        help="I/N: run every N-th missing cell from the I-th, for N parallel workers",
    )
    parser.add_argument("--threads", type=int, help="torch threads per worker")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    index, workers = (int(part) for part in args.shard.split("/"))
    study = STUDIES[args.study]
    results = _cached(study) if args.resume or args.write_only else {}
    cells = args.cells or (study.cells if args.all or args.study != "grid" else CELLS)
    missing = [cell for cell in cells if cell not in results]
    for cell in [] if args.write_only else missing[index::workers]:
        results[cell] = run_cell(cell, study)
        _store(results[cell], study)
        print(cell, _cell_text(results[cell]), f"{results[cell]['seconds']:.0f}s", flush=True)
    write = write_backdoor if args.study == "backdoor" else write_grid
    write(_cached(study) if args.resume else results)


if __name__ == "__main__":
    main()
