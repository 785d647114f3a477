"""Fixed cost per round of the Flower engines, side by side with in-process, and where it goes.

.venv/bin/python benchmarks/flower_overhead.py [--ranks 4 64] [--rounds 2]
.venv/bin/python benchmarks/flower_overhead.py --smoke     # end to end in minutes; prints only

One small experiment on the embedded SmolLM2-135M (2 clients, both selected, 1 local step) on
every engine in one run: in-process; Flower deployment (a SuperLink and 2 SuperNodes on
127.0.0.1, insecure) with site workers (``fedit flower supernode``'s default: the model stays
loaded) and without (``--no-site-worker``: every message's ClientApp loads it); and Flower's
simulation runtime (2 virtual clients on Ray, one actor each). Each at two LoRA ranks, so that
only the bytes per round differ: an engine's own time per round (fit minus the slowest
client's reported load + training) through the two ranks splits into a fixed cost per round
and a cost per byte. Then it times the parts of the fixed cost separately: a Python process
start, the ClientApp's imports (forwarding to a worker, or loading the model itself), the
serialisation of one round's messages, and the configured polling intervals.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, record

from fedit.config import load_config
from fedit.engines import flower_launch
from fedit.engines.flower import POLL_SECONDS
from fedit.engines.site_worker import SITE_WORKER_KEY, start_worker, stop_worker
from fedit.experiment import run_experiment

# Hard-coded in Flower 1.42 (flwr/supernode/start_client_internal.py): the SuperNode sleeps
# 3 s when it pulled no message, and 0.5 s between checks for the ClientApp's reply; fedit's
# launcher caps both at flower_launch.SUPERNODE_POLL_SECONDS (engines/supernode_main.py).
SUPERNODE_IDLE_POLL_SECONDS = min(3.0, flower_launch.SUPERNODE_POLL_SECONDS)
SUPERNODE_REPLY_POLL_SECONDS = min(0.5, flower_launch.SUPERNODE_POLL_SECONDS)
ENGINES = ("in-process", "deployment", "deployment-no-worker", "simulation")
SMALL = [
    "federation.num_clients=2",
    "federation.fraction_fit=1.0",
    "train.local_steps=1",
    "train.batch_size=2",
    "train.micro_batch_size=2",
    "train.cutoff_len=128",
    "data.synthetic.num_examples=120",
    "data.test_per_category=1",
    "eval.generate=false",
    "eval.base=false",
]
SMOKE = ["data.synthetic.num_examples=60"]


def _port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rounds(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["round"] > 0]


def round_costs(run_dir: Path, parallel: bool) -> dict[str, float]:
    """Per round, averaged: fit time, bytes, client compute, and what is left (the engine's own).

    Client compute is a client's training seconds plus its model load (0 when cached).
    In-process clients run one after another (sum); Flower's run at once (the slowest one).
    """
    fit, nbytes, compute, load = [], [], [], []
    for row in _rounds(run_dir):
        clients = row["client_metrics"].values()
        per_client = [m["seconds"] + m.get("load_seconds", 0.0) for m in clients]
        fit.append(row["seconds"]["fit"])
        comm = row["communication"]
        nbytes.append(comm["bytes_down"] + comm["bytes_up"])
        compute.append(max(per_client) if parallel else sum(per_client))
        load.extend(m.get("load_seconds", 0.0) for m in clients)
    mean = statistics.fmean
    return {
        "fit": mean(fit),
        "bytes": mean(nbytes),
        "compute": mean(compute),
        "engine": mean(fit) - mean(compute),
        "load": mean(load),
    }


def _start(command: list[str], env: dict[str, str], work: Path, logs) -> subprocess.Popen:
    return subprocess.Popen(
        command, env=env, cwd=work, stdout=logs, stderr=subprocess.STDOUT, start_new_session=True
    )


def run_flower(cfg_args: list[str], work: Path, workers: bool, num_clients: int = 2) -> Path:
    """One run on a fresh SuperLink + a SuperNode per client (with site workers or without);
    every process is stopped afterwards."""
    home, port = work / "flwr-home", _port()
    env = flower_launch.flower_env(home)
    address = f"127.0.0.1:{port}"
    logs = (work / "processes.log").open("ab")
    processes = [_start(flower_launch.superlink_command(address, insecure=True), env, work, logs)]
    started_workers = []
    try:
        flower_launch.wait_for_port(port)
        for client in range(num_clients):
            # The sites train at once on this machine: split its cores between them.
            threads = max(1, (os.cpu_count() or 2) // num_clients)
            node = {"partition-id": client, "num-partitions": num_clients, "num-threads": threads}
            if workers:
                process, folder = start_worker(env, work / f"worker{client}.log")
                started_workers.append((process, folder))
                node[SITE_WORKER_KEY] = str(folder)
            command = flower_launch.supernode_command(address, node, _port(), insecure=True)
            processes.append(_start(command, env, work, logs))
        cfg = load_config(
            ROOT / "configs" / "quickstart.yaml",
            [*cfg_args, "engine=flower", "flower.insecure=true", f"flower.superlink={address}"],
        )
        if flower_launch.run_on_flower(cfg, home) != 0:
            raise RuntimeError(f"flwr run failed; see {work / 'processes.log'}")
        return Path(cfg.output_dir).resolve()
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        for process, folder in started_workers:
            stop_worker(process, folder)


def run_simulation(cfg_args: list[str]) -> Path:
    """One run on Flower's simulation runtime: 2 virtual clients, one Ray actor each."""
    from fedit.flower_simulation import run_flower_simulation

    cpus = os.cpu_count() or 2
    sim = [
        "engine=flower-simulation",
        f"flower.simulation.num_cpus={cpus}",
        f"flower.simulation.client_cpus={max(1, cpus // 2)}",
    ]
    config = load_config(ROOT / "configs" / "quickstart.yaml", [*cfg_args, *sim])
    return run_flower_simulation(config).run_dir


def measure(rank: int, rounds: int, work: Path, engines: list[str], smoke: bool) -> dict:
    common = [*SMALL, *(SMOKE if smoke else [])]
    common += [f"lora.r={rank}", f"lora.alpha={2 * rank}", f"federation.rounds={rounds}"]
    row: dict = {"rank": rank}
    for engine in engines:
        out = [*common, f"output_dir={work}/{engine}"]
        started = time.perf_counter()
        if engine == "in-process":
            run_dir = run_experiment(load_config(ROOT / "configs" / "quickstart.yaml", out)).run_dir
        elif engine == "simulation":
            run_dir = run_simulation(out)
        else:
            run_dir = run_flower(out, work, workers=engine == "deployment")
        costs = round_costs(run_dir, parallel=engine != "in-process")
        row[engine] = {**costs, "wall": time.perf_counter() - started}
        print(engine, rank, row[engine], flush=True)
    return row


def _seconds(code: str, repeats: int) -> float:
    """Median wall time of ``python -c code`` in a fresh process."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def parts(run_dir: Path, repeats: int) -> dict[str, float]:
    """The fixed cost's parts, each timed on its own."""
    from fedit.engines.messages import (
        pack_instruction,
        pack_update,
        unpack_instruction,
        unpack_update,
    )
    from fedit.model.lora import load_adapter_state
    from fedit.types import ClientUpdate, FitConfig, FitInstruction

    start = _seconds("pass", repeats)
    forwarding = _seconds("import fedit.flower_app", repeats) - start
    loading = _seconds("import fedit.flower_app, fedit.engines.flower_site", repeats) - start
    state = load_adapter_state(run_dir / "global_adapter")
    instruction = FitInstruction(0, state, FitConfig(lr=1e-3, rank=4, seed=0), {})
    started = time.perf_counter()
    for _ in range(repeats):
        received = unpack_instruction(pack_instruction(instruction))
        update = ClientUpdate(0, received.state, 10, 0.5, 1, {})
        unpack_update(pack_update(update, instruction), instruction)
    serialisation = (time.perf_counter() - started) / repeats
    return {
        "process start": start,
        "ClientApp imports (forwarding to a site worker)": forwarding,
        "ClientApp imports (loading the model itself)": loading,
        "serialisation of one client's round (pack + unpack, both ways)": serialisation,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, nargs=2, default=[4, 64])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 round; prints only")
    parser.add_argument("--note", default="", help="a line about the machine (e.g. shared)")
    args = parser.parse_args()
    if args.smoke:
        args.ranks, args.rounds = [2, 4], 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedit-flower-bench-") as work:
        for rank in args.ranks:
            rows.append(
                measure(rank, args.rounds, Path(work) / f"r{rank}", args.engines, args.smoke)
            )
        any_run = next((Path(work) / f"r{args.ranks[1]}").iterdir())
        components = parts(any_run, 1 if args.smoke else 5)
    body = _body(rows, components, args)
    if args.smoke:
        print(body)
        return
    record("flower", "Flower engines: fixed cost per round", body)


def _fixed_and_per_byte(rows: list[dict], engine: str) -> tuple[float, float]:
    small, large = rows[0][engine], rows[1][engine]
    per_byte = (large["engine"] - small["engine"]) / max(1.0, large["bytes"] - small["bytes"])
    return small["engine"] - per_byte * small["bytes"], per_byte


def _body(rows: list[dict], components: dict[str, float], args: argparse.Namespace) -> str:
    engines = [e for e in ENGINES if e in rows[0]]
    lines = [
        f"SmolLM2-135M, 2 clients (both selected), 1 local step of 2 examples, {args.rounds} "
        "rounds, LoRA q/k/v/o. Deployment: a SuperLink and 2 SuperNodes on 127.0.0.1 "
        "(insecure), each SuperNode with `num-threads` = half the cores, with site workers "
        "(the default) or without (`--no-site-worker`). Simulation: 2 virtual clients on Ray, "
        "one actor each with half the cores. Times are the round's fit phase (send, train, "
        "receive), averaged over rounds; evaluation is the same everywhere and not included. "
        "Client compute is what the clients report (training, plus a model load when there is "
        "one); an engine's own time is fit minus client compute.",
        "",
        "| engine | LoRA rank | bytes/round | fit s | client compute s | model load s "
        "(mean per message) | engine's own s | whole run s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for engine in engines:
            r = row[engine]
            lines.append(
                f"| {engine} | {row['rank']} | {r['bytes'] / 1e6:.2f} MB | {r['fit']:.1f} "
                f"| {r['compute']:.1f} | {r['load']:.2f} | {r['engine']:.2f} | {r['wall']:.0f} |"
            )
    lines += ["", "| engine | fixed cost per round | per MB | target (3 s) |", "|---|---|---|---|"]
    for engine in engines:
        fixed, per_byte = _fixed_and_per_byte(rows, engine)
        met = "" if engine == "in-process" else ("met" if fixed <= 3.0 else "not met")
        lines.append(f"| {engine} | {fixed:.1f} s | {per_byte * 1e9:.1f} ms | {met} |")
    lines += ["", "Where the fixed cost goes, each part timed on its own:", ""]
    lines += ["| part | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.2f} |" for name, seconds in components.items()]
    polls = POLL_SECONDS + flower_launch.SUPEREXEC_POLL_SECONDS
    polls += SUPERNODE_IDLE_POLL_SECONDS + SUPERNODE_REPLY_POLL_SECONDS
    lines.append(
        f"| polling, expected wait (half of each interval): the server pulls replies every "
        f"{POLL_SECONDS:g} s and the SuperExec looks for a task every "
        f"{flower_launch.SUPEREXEC_POLL_SECONDS:g} s (fedit's settings); an idle SuperNode "
        f"asks for messages every {SUPERNODE_IDLE_POLL_SECONDS:g} s and checks for the "
        f"ClientApp's reply every {SUPERNODE_REPLY_POLL_SECONDS:g} s (fedit's launcher; Flower "
        "1.42's own are a fixed 3 s and 0.5 s) "
        f"| {polls / 2:.2f} |"
    )
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
