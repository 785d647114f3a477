"""Throughput and memory of the three engines on the quickstart (8 clients, 4 per round).

.venv/bin/python benchmarks/scale.py [--rounds 2] [--parallel 1 2 4]
.venv/bin/python benchmarks/scale.py --smoke     # tiny run of every engine; prints only

For each engine it runs the quickstart and samples the memory of every process it started
(proportional set size, so that pages shared between processes, such as the mapped model
file, count once) every ``--interval`` seconds:

* rounds per hour (from the rounds' fit + evaluation seconds in metrics.jsonl) and peak memory
  of the whole process tree: in-process, Flower deployment (a SuperLink and one SuperNode with
  its site worker per client, on this machine), and Flower's simulation runtime with 2 virtual
  clients in parallel;
* peak memory of one client process: a site worker, or a Ray actor (each holds its own copy of
  the base model);
* for the simulation, how peak memory grows with the number of clients in parallel.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from common import QUICKSTART, ROOT, record
from flower_overhead import run_flower

SMOKE = [
    "data.synthetic.num_examples=80",
    "data.test_per_category=1",
    "train.local_steps=1",
    "eval.generate=false",
    "eval.base=false",
]
CLIENT_MARKS = {"simulation": "ClientAppActor", "deployment": "fedit.engines.site_worker"}


class MemorySampler:
    """Peak PSS of every process below this one: the sum, and each process's own peak."""

    def __init__(self, interval: float):
        self.interval = interval
        self.peak_total = 0
        self.peak_by_process: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for child in psutil.Process().children(recursive=True):
                try:
                    pss = child.memory_full_info().pss
                    command = " ".join(child.cmdline())
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += pss
                name, peak = self.peak_by_process.get(child.pid, (command, 0))
                self.peak_by_process[child.pid] = (command or name, max(peak, pss))
            self.peak_total = max(self.peak_total, total)
            self._stop.wait(self.interval)

    def client_peaks(self, mark: str) -> list[int]:
        return [peak for command, peak in self.peak_by_process.values() if mark in command]


def rounds_per_hour(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    seconds = [sum(row["seconds"].values()) for row in rows if row["round"] > 0]
    return 3600 / statistics.fmean(seconds)


def _fedit_run(items: list[str]) -> Path:
    """``fedit run`` in a child process; its run directory (the last output_dir item)."""
    fedit = Path(sys.executable).with_name("fedit")
    subprocess.run([str(fedit), "run", str(QUICKSTART), *items], cwd=ROOT, check=True)
    return Path([i for i in items if i.startswith("output_dir=")][-1].split("=", 1)[1])


def measure(engine: str, kind: str, run: Callable[[], Path], interval: float) -> dict:
    """Run one engine (``kind``: in-process, deployment or simulation) under the sampler."""
    with MemorySampler(interval) as sampler:
        started = time.perf_counter()
        run_dir = run()
        wall = time.perf_counter() - started
    clients = sampler.client_peaks(CLIENT_MARKS[kind]) if kind in CLIENT_MARKS else []
    result = {
        "engine": engine,
        "rounds_per_hour": rounds_per_hour(run_dir),
        "peak_total": sampler.peak_total,
        "peak_client": max(clients) if clients else 0,
        "wall": wall,
    }
    print(result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--smoke", action="store_true", help="tiny runs; prints only")
    parser.add_argument("--note", default="", help="a line about the machine (e.g. shared)")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.parallel = 1, [1, 2]
    num_clients = args.num_clients = 4 if args.smoke else 8  # the quickstart's 8, half per round
    common = [f"federation.rounds={args.rounds}", f"federation.num_clients={num_clients}"]
    common += ["overwrite=true", *(SMOKE if args.smoke else [])]
    rows, growth = [], []
    with tempfile.TemporaryDirectory(prefix="fedit-scale-") as work:
        out = Path(work)
        local = [*common, f"output_dir={out}/local"]
        rows.append(measure("in-process", "in-process", lambda: _fedit_run(local), args.interval))
        deployed = [*common, f"output_dir={out}/flower"]
        rows.append(
            measure(
                "deployment",
                "deployment",
                lambda: run_flower(deployed, out, workers=True, num_clients=num_clients),
                args.interval,
            )
        )
        for parallel in sorted({2, *args.parallel}):
            items = [
                *common,
                f"output_dir={out}/sim{parallel}",
                "engine=flower-simulation",
                f"flower.simulation.num_cpus={parallel}",
                "flower.simulation.client_cpus=1",
            ]
            result = measure(
                f"simulation ({parallel} parallel)",
                "simulation",
                lambda items=items: _fedit_run(items),  # type: ignore[misc]
                args.interval,
            )
            result["parallel"] = parallel
            growth.append(result)
            if parallel == 2:
                rows.append(result)
    body = _body(rows, growth, args)
    if args.smoke:
        print(body)
        return
    record("scale", "Throughput and memory per engine (quickstart)", body)


def _gb(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


def _body(rows: list[dict], growth: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"The quickstart (SmolLM2-135M, {args.num_clients} clients, half of them per round), "
        f"{args.rounds} rounds, on this "
        "machine. Memory is the proportional set size (PSS) of every process the engine "
        f"started, sampled every {args.interval:g} s: pages shared between processes count "
        f"once. Deployment: a SuperLink and {args.num_clients} SuperNodes, each with its site "
        "worker; simulation: "
        "Ray with `client_cpus=1`, `num_cpus` = the clients in parallel.",
        "",
        "| engine | rounds per hour | peak memory, all processes | peak memory of one client |",
        "|---|---|---|---|",
    ]
    for r in rows:
        client = _gb(r["peak_client"]) if r["peak_client"] else "(one process)"
        lines.append(
            f"| {r['engine']} | {r['rounds_per_hour']:.1f} | {_gb(r['peak_total'])} | {client} |"
        )
    lines += [
        "",
        "Simulation: peak memory against the clients in parallel. Each Ray actor holds its own "
        "copy of the base model, so memory grows by about one client's footprint per actor.",
        "",
        "| clients in parallel | peak memory, all processes | per actor | rounds per hour |",
        "|---|---|---|---|",
    ]
    for g in growth:
        lines.append(
            f"| {g['parallel']} | {_gb(g['peak_total'])} | {_gb(g['peak_client'])} "
            f"| {g['rounds_per_hour']:.1f} |"
        )
    if len(growth) > 1:
        first, last = growth[0], growth[-1]
        step = (last["peak_total"] - first["peak_total"]) / (last["parallel"] - first["parallel"])
        lines += ["", f"Growth per extra parallel client: {_gb(step)}."]
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
