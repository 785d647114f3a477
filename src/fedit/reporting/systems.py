"""The report's simulated-time section: the clock's totals, time-to-target, the plot's points.

Only runs with ``federation.system`` profiles have it: their rounds carry a ``system`` record
(``server.clock``) whose ``elapsed`` is the simulated seconds at the round's end.
"""

from __future__ import annotations

from typing import Any

PLOT = "simulated_time.png"


def has_clock(history: list[dict[str, Any]]) -> bool:
    """Whether the run recorded simulated time."""
    return any("system" in r for r in history)


def evaluations_in_time(history: list[dict[str, Any]]) -> list[tuple[float, dict[str, Any]]]:
    """(simulated seconds, evaluation) for every evaluated round; round 0 is at 0 s."""
    points = []
    for record in history:
        if not record.get("eval"):
            continue
        if record["round"] == 0:
            points.append((0.0, record["eval"]))
        elif "system" in record:
            points.append((float(record["system"]["elapsed"]), record["eval"]))
    return points


def time_to_target(
    history: list[dict[str, Any]], metric: str, target: float
) -> tuple[float, int] | None:
    """Simulated seconds and round at which ``metric`` first reaches ``target``, or None.

    Accuracy reaches it from below (>=), the loss from above (<=).
    """
    for record in history:
        value = (record.get("eval") or {}).get(metric)
        if value is None or (record["round"] > 0 and "system" not in record):
            continue
        reached = value >= target if metric == "accuracy" else value <= target
        if reached:
            seconds = 0.0 if record["round"] == 0 else float(record["system"]["elapsed"])
            return seconds, int(record["round"])
    return None


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.3g} h ({seconds:,.0f} s)"


def _targets(history: list[dict[str, Any]], eval_cfg: dict[str, Any]) -> list[str]:
    lines = []
    for metric in ("accuracy", "loss"):
        target = eval_cfg.get(f"target_{metric}")
        if target is None:
            continue
        reached = time_to_target(history, metric, target)
        if reached is None:
            lines.append(f"- Time to eval.target_{metric}={target:g}: not reached")
        else:
            lines.append(
                f"- Time to eval.target_{metric}={target:g}: {_hours(reached[0])}, "
                f"at round {reached[1]}"
            )
    return lines


def systems_section(history: list[dict[str, Any]], cfg: dict[str, Any]) -> list[str]:
    """Markdown lines: profiles, simulated (or measured) time, time-to-target, waste, the plot."""
    records = [r["system"] for r in history if "system" in r]
    if not records:
        return []
    system = cfg["federation"]["system"]
    source = system["profiles"]
    measured = source == "measured"
    if source == "csv":
        source = f"csv `{system['csv']}`"
    elif measured:
        source = "measured: each client's wall-clock round trip on the deployment"
    else:
        source += f" (median {system['speed_median']:g} tokens/s, σ {system['speed_sigma']:g})"
    times = [t for r in records for t in r["clients"].values()]
    total = sum(t["total"] for t in times) or 1.0
    parts = ("compute", "network") if measured else ("download", "compute", "upload")
    shares = ", ".join(f"{k} {sum(t[k] for t in times) / total:.0%}" for k in parts)
    kind = "Measured" if measured else "Simulated"
    lines = [
        f"## {kind} time",
        "",
        f"- Profiles: {source}"
        + ("" if measured else f"; availability {system['availability']:g}"),
        f"- {kind} time: {_hours(records[-1]['elapsed'])} over {len(records)} rounds, "
        f"the slowest client's time each round (docs/systems.md)",
        f"- Client time spent: {shares}",
        *_targets(history, cfg.get("eval") or {}),
    ]
    late = sum(len(r.get("late", [])) for r in records)
    if "wasted" in records[0]:
        wasted = {k: sum(r["wasted"][k] for r in records) for k in records[0]["wasted"]}
        if measured:
            waste = (
                f"{wasted['bytes_down'] / 1e6:.2f} MB sent to them (their training and "
                "uploads never reached the server)"
            )
        else:
            waste = (
                f"{wasted['tokens']:,} tokens and "
                f"{(wasted['bytes_down'] + wasted['bytes_up']) / 1e6:.2f} MB"
            )
        lines.append(f"- Missed the deadline: {late} client rounds, wasting {waste}")
    return [*lines, "", f"![held-out loss and accuracy against {kind.lower()} hours]({PLOT})", ""]
