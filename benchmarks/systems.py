"""Time to a target accuracy on the simulated clock: random, deadline, oort, diverse, fedbuff.

Issue 30's measurement. The quickstart's model and embedded suite split across 32 clients
(2 category shards each) with sampled system profiles: log-normal speeds (median 1,000
tokens/s, σ ``--speed-sigma``), the three default bandwidth tiers (10/50/200 Mbit/s down,
2/10/50 up) and availability 0.8. Every run evaluates (loss and exact-match accuracy) after
every round, so that the simulated time at which accuracy first reaches ``--target`` is read
from its ``metrics.jsonl`` (``system.elapsed``; docs/systems.md). The deadline is the
``--deadline-percentile``-th percentile of the clients' expected times for the work each did in
the same seed's random run, with over-selection 1.3. fedbuff aggregates every
``--per-round`` arrivals with ``--fedbuff-concurrency`` clients training at once.

    .venv/bin/python benchmarks/systems.py                      # all: ~5-6 h on 2 cores (estimate)
    .venv/bin/python benchmarks/systems.py --methods random oort --seeds 42   # a piece
    .venv/bin/python benchmarks/systems.py --report-only        # the section from results.json
    .venv/bin/python benchmarks/systems.py --clock-cost         # the simulator's own cost, seconds
    .venv/bin/python benchmarks/systems.py --smoke              # tiny model, 8 clients, no docs

Finished runs are kept in ``runs/bench_systems/results.json`` (one entry per method and seed)
and skipped when the script runs again, so the full measurement can be run in pieces.
``--clock-cost`` (the simulator's own cost, training stubbed out) is in ``systems_clock.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import QUICKSTART, ROOT, record
from systems_clock import clock_cost

from fedit.config import load_config
from fedit.evaluation.intervals import t_interval
from fedit.reporting.systems import time_to_target
from fedit.server.clock import SimulatedClock
from fedit.server.profiles import load_profiles

METHODS = ("random", "deadline", "oort", "diverse", "fedbuff")
WORK_KEYS = ("tokens", "bytes_down", "bytes_up")


def base_overrides(args: argparse.Namespace, seed: int, out: Path) -> list[str]:
    """The setup every method shares (the smoke test swaps the model and shrinks the data)."""
    extra = [
        "model.dtype=fp32",  # as measured before the quickstart moved to auto (issue 32)
        f"federation.num_clients={args.clients}",
        f"federation.fraction_fit={args.per_round / args.clients}",
        f"federation.rounds={args.rounds}",
        "federation.system.profiles=sampled",
        f"federation.system.speed_sigma={args.speed_sigma}",
        f"federation.system.availability={args.availability}",
        f"eval.target_accuracy={args.target}",
        "eval.every=1",
        "eval.generate_every=1",
        f"seed={seed}",
        f"output_dir={out}",
        "overwrite=true",
    ]
    if args.smoke:
        extra += [
            f"model.name={args.tiny_model}",
            "data.synthetic.num_examples=160",
            "data.test_per_category=2",
            "train.local_steps=2",
            "train.batch_size=4",
            "train.micro_batch_size=2",
            "eval.max_new_tokens=4",
        ]
    return extra


def method_overrides(method: str, args: argparse.Namespace, deadline: float | None) -> list[str]:
    if method == "deadline":
        return [f"federation.deadline={deadline:.6g}", f"federation.over_select={args.over_select}"]
    if method in ("oort", "diverse"):
        return [f"federation.selection={method}"]
    if method == "fedbuff":
        return [
            "strategy.name=fedbuff",
            f"federation.concurrency={args.fedbuff_concurrency}",
            f"strategy.buffer_size={args.per_round}",
        ]
    return []


def mean_work(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """A client's mean tokens and bytes over every reply of a run's records."""
    replies = [m for r in rounds for m in (r.get("client_metrics") or {}).values()]
    return {key: statistics.mean(float(m.get(key, 0)) for m in replies) for key in WORK_KEYS}


def deadline_for(cfg_overrides: list[str], work: dict[str, float], percentile: float) -> float:
    """The ``percentile``-th percentile of every client's expected seconds for ``work``."""
    cfg = load_config(QUICKSTART, cfg_overrides)
    profiles = load_profiles(cfg.federation.system, cfg.federation.num_clients, cfg.seed)
    clock = SimulatedClock(profiles, cfg.seed)
    work_ints = [int(round(work[key])) for key in ("bytes_down", "tokens", "bytes_up")]
    times = [clock.expected_seconds(c, *work_ints) for c in range(len(profiles))]
    return float(np.percentile(times, percentile))


def summarise(run_dir: Path, target: float) -> dict[str, Any]:
    """What the table needs, read from the run's metrics.jsonl."""
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    rounds = [r for r in history if r["round"] > 0]
    evaluated = [r for r in history if (r.get("eval") or {}).get("accuracy") is not None]
    final = evaluated[-1]["eval"]
    reached = time_to_target(history, "accuracy", target)
    wasted = {key: 0 for key in WORK_KEYS}
    for r in rounds:
        for key in WORK_KEYS:
            wasted[key] += int(r.get("system", {}).get("wasted", {}).get(key, 0))
    return {
        "time_to_target": None if reached is None else reached[0],
        "round_to_target": None if reached is None else reached[1],
        "elapsed": rounds[-1]["system"]["elapsed"] if rounds else 0.0,
        "accuracy": final["accuracy"],
        "loss": final["loss"],
        "wasted": wasted,
        "late": sum(len(r.get("system", {}).get("late", [])) for r in rounds),
        "work": mean_work(rounds),
    }


def run_one(method: str, seed: int, args: argparse.Namespace, saved: dict) -> dict[str, Any]:
    from fedit.experiment import run_experiment

    out = args.out / f"{method}-{seed}"
    common = base_overrides(args, seed, out)
    deadline = None
    if method == "deadline":
        work = saved[f"random/{seed}"]["work"]  # the same seed's random run, run first
        deadline = deadline_for(common, work, args.deadline_percentile)
    started = time.perf_counter()
    outcome = run_experiment(
        load_config(QUICKSTART, [*common, *method_overrides(method, args, deadline)])
    )
    result = summarise(outcome.run_dir, args.target)
    result.update(method=method, seed=seed, deadline=deadline)
    result["wall_seconds"] = time.perf_counter() - started
    return result


def _hours(seconds: float | None) -> str:
    if seconds is None or math.isinf(seconds):
        return "not reached"
    return f"{seconds / 3600:.2f} h" if seconds >= 36 else f"{seconds:.1f} s"


def _interval(values: list[float]) -> str:
    interval = t_interval(values)
    if math.isnan(interval.low):
        return f"{interval.mean:.3f}"
    return f"{interval.mean:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def median_time(runs: list[dict]) -> float:
    """Median over seeds of the time to target, a seed that never reached it counting as ∞."""
    return statistics.median(
        math.inf if r["time_to_target"] is None else r["time_to_target"] for r in runs
    )


def _per_seed(runs: list[dict], random_by_seed: dict[int, float | None]) -> str:
    """Each seed's time to target over the same seed's random run ("–": either missed it)."""
    ratios = []
    for r in runs:
        mine, theirs = r["time_to_target"], random_by_seed.get(r["seed"])
        ratios.append("–" if mine is None or not theirs else f"{mine / theirs:.2f}")
    return " / ".join(ratios)


def table(by_method: dict[str, list[dict]]) -> str:
    random_time = median_time(by_method["random"]) if "random" in by_method else math.inf
    lines = [
        "| method | seeds reaching | time to target: median (range) | × random | × random per "
        "seed | accuracy | loss | wasted tokens | wasted MB | simulated time in all | wall min |",
        "|---|---:|---|---:|---|---|---|---:|---:|---:|---:|",
    ]
    random_by_seed = {r["seed"]: r["time_to_target"] for r in by_method.get("random", [])}
    for method, runs in by_method.items():
        reached = [r["time_to_target"] for r in runs if r["time_to_target"] is not None]
        spread = f" ({_hours(min(reached))}–{_hours(max(reached))})" if len(reached) > 1 else ""
        median = median_time(runs)
        ratio = median / random_time if math.isfinite(median * random_time) else math.nan
        wasted_tokens = statistics.mean(r["wasted"]["tokens"] for r in runs)
        wasted_mb = statistics.mean(
            (r["wasted"]["bytes_down"] + r["wasted"]["bytes_up"]) / 1e6 for r in runs
        )
        lines.append(
            f"| {method} | {len(reached)}/{len(runs)} | {_hours(median)}{spread} | "
            f"{'–' if math.isnan(ratio) else f'{ratio:.2f}'} | "
            f"{_per_seed(runs, random_by_seed)} | "
            f"{_interval([r['accuracy'] for r in runs])} | "
            f"{_interval([r['loss'] for r in runs])} | "
            f"{wasted_tokens:,.0f} | {wasted_mb:.2f} | "
            f"{_hours(statistics.mean(r['elapsed'] for r in runs))} | "
            f"{statistics.mean(r['wall_seconds'] for r in runs) / 60:.1f} |"
        )
    return "\n".join(lines)


def verdict(by_method: dict[str, list[dict]], target: float) -> str:
    """Whether a method reaches the target ≥ 2× sooner than random at equal final accuracy.

    Equal accuracy: the t-interval over seeds of the paired difference (method − random, seed
    by seed) contains zero or lies above it; with one seed, the method's accuracy is not lower.
    """
    if "random" not in by_method:
        return "Random synchronous selection was not run: no comparison."
    random_runs = {r["seed"]: r for r in by_method["random"]}
    random_time = median_time(by_method["random"])
    sentences = []
    winners = []
    for method, runs in by_method.items():
        if method == "random":
            continue
        paired = [
            r["accuracy"] - random_runs[r["seed"]]["accuracy"]
            for r in runs
            if r["seed"] in random_runs
        ]
        if not paired:
            continue
        diff = t_interval(paired)
        equal = diff.mean >= 0 if math.isnan(diff.low) else diff.high >= 0
        median = median_time(runs)
        if math.isinf(median):
            speed = "does not reach it (median over seeds)"
            fast = False
        elif math.isinf(random_time):
            longest = max(r["elapsed"] for r in by_method["random"])
            speed = (
                f"reaches it in {_hours(median)}, where random does not within its "
                f"{_hours(longest)}"
            )
            fast = median <= longest / 2
        else:
            speed = f"takes {median / random_time:.2f}× random's time"
            fast = median <= random_time / 2
        accuracy = "equal" if equal else "lower"
        sentences.append(
            f"{method} {speed}, final accuracy {accuracy} (paired difference {diff.mean:+.3f}"
            + ("" if math.isnan(diff.low) else f" [{diff.low:+.3f}, {diff.high:+.3f}]")
            + ")"
        )
        if fast and equal:
            winners.append(method)
    seeds = len(random_runs)
    head = (
        f"**Met**: {', '.join(winners)} reach{'es' if len(winners) == 1 else ''} accuracy "
        f"{target:g} at least 2× sooner in simulated time than random synchronous selection, "
        "at equal final accuracy."
        if winners
        else f"**Not met**: no method reaches accuracy {target:g} at least 2× sooner in simulated "
        "time than random synchronous selection at equal final accuracy."
    )
    if seeds < 2:  # "within the interval" needs one: say what one seed shows, no verdict
        head = (
            "**Not judged yet**: one seed has no interval. On it, "
            + (", ".join(winners) or "no method")
            + f" reached accuracy {target:g} at least 2× sooner than random at no lower final "
            "accuracy."
        )
    return (
        f"{head} Random's median time to target: {_hours(random_time)}. "
        + "; ".join(sentences)
        + ". Equal accuracy means the 95% t-interval over seeds of the paired difference "
        "(method − random, seed by seed) reaches zero or lies above it (one seed: not lower)."
    )


def report(saved: dict, args: argparse.Namespace) -> str:
    by_method: dict[str, list[dict]] = {}
    for method in METHODS:
        runs = [saved[f"{method}/{s}"] for s in args.seeds if f"{method}/{s}" in saved]
        if runs:
            by_method[method] = runs
    deadlines = [f"{r['deadline']:.0f}" for r in by_method.get("deadline", [])]
    return (
        f"The quickstart's model and embedded suite across {args.clients} clients (2 category "
        f"shards each), {args.per_round} per round, {args.rounds} rounds (fedbuff: "
        f"{args.rounds} aggregations of {args.per_round} arrivals, {args.fedbuff_concurrency} "
        f"training at once). Sampled profiles: log-normal speeds, median 1,000 tokens/s, "
        f"σ = {args.speed_sigma:g}; bandwidth tiers 10/50/200 Mbit/s down and 2/10/50 up "
        f"(weights 0.3/0.4/0.3); availability {args.availability:g}. Seeds "
        f"{list(args.seeds)}. Target: held-out exact-match accuracy {args.target:g}, evaluated "
        "after every round; time to target is the simulated `system.elapsed` of the first "
        "round that reaches it. Deadline: the "
        f"{args.deadline_percentile:g}th percentile of the clients' expected times for the "
        f"mean work of the same seed's random run ({', '.join(deadlines) or '–'} s), "
        f"over-selection {args.over_select:g}. Accuracy and loss after the last round: mean "
        "[95% t-interval over seeds]; wasted work (deadline misses) is the mean per run.\n\n"
        + table(by_method)
        + "\n\n"
        + verdict(by_method, args.target)
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--rounds", type=int, default=10, help="rounds, or fedbuff aggregations")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--per-round", type=int, default=4, help="clients per round; fedbuff's K")
    parser.add_argument("--fedbuff-concurrency", type=int, default=8)
    parser.add_argument("--speed-sigma", type=float, default=1.0)
    parser.add_argument("--availability", type=float, default=0.8)
    parser.add_argument("--target", type=float, default=0.3, help="eval.target_accuracy")
    parser.add_argument("--deadline-percentile", type=float, default=70.0)
    parser.add_argument("--over-select", type=float, default=1.3)
    parser.add_argument("--output-dir", default="runs/bench_systems")
    parser.add_argument("--report-only", action="store_true", help="the section from results.json")
    parser.add_argument("--clock-cost", action="store_true", help="only the simulator's own cost")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 8 clients, no docs")
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.rounds, args.per_round, args.fedbuff_concurrency = 8, 2, 2, 4
        args.seeds = args.seeds[:1]
        args.output_dir = f"{args.output_dir}_smoke"
    args.out = ROOT / args.output_dir
    return args


def main() -> None:
    args = parse_args()
    if args.clock_cost:
        record("systems_clock", "Systems: the simulated clock's own cost", clock_cost())
        return
    results_file = args.out / "results.json"
    saved = json.loads(results_file.read_text()) if results_file.is_file() else {}
    with tempfile.TemporaryDirectory() as scratch:
        if args.smoke:
            sys.path.insert(0, str(ROOT / "tests"))
            from conftest import build_tiny_model

            args.tiny_model = build_tiny_model(Path(scratch) / "tiny-llama")
            saved = {}  # the smoke test always runs
        # random first: the deadline comes from the same seed's random run
        methods = [
            m
            for m in METHODS
            if m in args.methods or (m == "random" and "deadline" in args.methods)
        ]
        for seed in args.seeds:
            for method in methods:
                key = f"{method}/{seed}"
                if key in saved or args.report_only:
                    continue
                print(f"== {key}", flush=True)
                saved[key] = run_one(method, seed, args, saved)
                args.out.mkdir(parents=True, exist_ok=True)
                results_file.write_text(json.dumps(saved, indent=1))
    body = report(saved, args)
    if args.smoke:
        print(body)
    else:
        record("systems", "Systems: time to target on the simulated clock", body)


if __name__ == "__main__":
    main()
