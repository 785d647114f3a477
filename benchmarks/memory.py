"""Peak memory of a 20-client simulation vs a 2-client one (target: within 5%).

Each size runs in a fresh process: the same model, data and number of trained clients per
round; only the number of clients the data is split across differs. Peak RSS is the process
high-water mark (ru_maxrss).

    .venv/bin/python benchmarks/memory.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile

from common import ROOT, record

TARGET = 0.05
SIZES = (2, 20)


def child(num_clients: int, rounds: int, out: str) -> None:
    from fedit.config import load_config
    from fedit.experiment import run_experiment

    cfg = load_config(
        ROOT / "configs" / "quickstart.yaml",
        [
            f"federation.num_clients={num_clients}",
            f"federation.fraction_fit={2 / num_clients}",
            f"federation.rounds={rounds}",
            "train.local_steps=2",
            "eval.base=false",
            "eval.generate=false",
            f"output_dir={out}",
        ],
    )
    run_experiment(cfg)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"num_clients": num_clients, "peak_mib": peak_mib}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rounds, args.out)
        return
    peaks = {}
    for size in SIZES:
        with tempfile.TemporaryDirectory() as tmp:
            result = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(size),
                    "--rounds",
                    str(args.rounds),
                    "--out",
                    f"{tmp}/run",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
        peaks[size] = json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]
    small, large = peaks[SIZES[0]], peaks[SIZES[1]]
    growth = large / small - 1
    body = "\n".join(
        [
            f"Quickstart model and data, {args.rounds} rounds, 2 clients trained per round, "
            "2 local steps, loss-only evaluation.",
            "",
            "| clients | peak RSS (MiB) |",
            "|---|---|",
            *[f"| {size} | {peaks[size]:,.0f} |" for size in SIZES],
            "",
            f"Growth from {SIZES[0]} to {SIZES[1]} clients: **{100 * growth:+.1f}%** "
            f"(target within {100 * TARGET:.0f}%: {'met' if abs(growth) <= TARGET else 'missed'}).",
        ]
    )
    record("memory", "Peak memory vs number of simulated clients", body)


if __name__ == "__main__":
    main()
