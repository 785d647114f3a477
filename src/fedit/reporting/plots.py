"""PNG plots: a run (loss and accuracy per round, per category); fedit compare (bars per
category, per-client gains, learning curves with reference lines)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedit.io import atomic_write_bytes  # noqa: E402


def _save(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _mean_train_loss(record: dict[str, Any]) -> float | None:
    losses = list(record.get("train_loss", {}).values())
    return sum(losses) / len(losses) if losses else None


def plot_loss(history: list[dict[str, Any]], path: Path) -> None:
    """Mean client train loss and held-out eval loss per round (round 0 = base model)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    train = [(r["round"], _mean_train_loss(r)) for r in history if _mean_train_loss(r) is not None]
    evals = [(r["round"], r["eval"]["loss"]) for r in history if (r.get("eval") or {}).get("loss")]
    if train:
        ax.plot(*zip(*train, strict=True), marker="o", label="train loss (mean of clients)")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="s", label="held-out loss (global adapter)")
    ax.set_xlabel("round (0 = base model)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    ax.set_title("Loss per round")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_accuracy(history: list[dict[str, Any]], path: Path) -> None:
    """Overall held-out accuracy of the global adapter per round."""
    points = [
        (r["round"], r["eval"]["accuracy"])
        for r in history
        if (r.get("eval") or {}).get("accuracy") is not None
    ]
    fig, ax = plt.subplots(figsize=(6, 4))
    if points:
        ax.plot(*zip(*points, strict=True), marker="o", color="tab:green")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("round (0 = base model)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("exact-match accuracy")
    ax.set_title("Held-out accuracy per round")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_simulated_time(
    points: list[tuple[float, dict[str, Any]]], path: Path, kind: str = "simulated"
) -> None:
    """Held-out loss and accuracy against simulated (or measured) hours: ``federation.system``."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((loss_ax, "loss", "held-out loss"), (acc_ax, "accuracy", None)):
        series = [(s / 3600, e[metric]) for s, e in points if e.get(metric) is not None]
        if series:
            ax.plot(*zip(*series, strict=True), marker="o")
        ax.set_xlabel(f"{kind} hours")
        ax.set_ylabel(label or "exact-match accuracy")
        ax.grid(alpha=0.3)
    acc_ax.set_ylim(0, 1.02)
    fig.suptitle(f"Held-out loss and accuracy against {kind} time")
    _save(fig, path)


def plot_category_accuracy(base: dict[str, float], final: dict[str, float], path: Path) -> None:
    """Grouped bars: base model vs final global adapter, per category."""
    series = {"base model": base, "FedIT global adapter": final}
    grouped_bars(series, sorted(set(base) | set(final)), "exact-match accuracy", path, (0, 1.02))


def grouped_bars(
    series: dict[str, dict[str, float]],
    categories: list[str],
    ylabel: str,
    path: Path,
    ylim: tuple[float, float] | None = None,
    title: str | None = None,
) -> None:
    """One group of bars per category, one bar per series (missing values drawn as 0)."""
    positions = range(len(categories))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6, (0.4 + 0.25 * len(series)) * len(categories) + 2), 4))
    for index, (label, values) in enumerate(series.items()):
        offset = (index - (len(series) - 1) / 2) * width
        heights = [values.get(c) or 0 for c in categories]
        ax.bar([p + offset for p in positions], heights, width, label=label)
    ax.set_xticks(list(positions), categories, rotation=30, ha="right")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{ylabel.capitalize()} per category")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_compare(
    rows: list[tuple[str, dict[str, Any]]], metric: str, by_key: str, title: str, path: Path
) -> None:
    """``fedit compare``'s chart: every model's ``metric`` per category, then overall."""
    from fedit.reporting.summary import metric_view

    series = {}
    for label, result in rows:
        view = metric_view(result)
        series[label] = {**(view.get(by_key) or {}), "overall": view.get(metric)}
    categories = sorted({c for values in series.values() for c in values} - {"overall"})
    grouped_bars(
        series, categories + ["overall"], title, path, title=f"{rows[0][1]['suite']}: {title}"
    )


def plot_client_gains(series: dict[str, dict[str, tuple[float, float]]], path: Path) -> None:
    """Each client's gain over its own Local model (y) against its divergence from the global
    mix (x): one series per model (FedIT, and each personalization method)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for model, points in series.items():
        ordered = sorted(points.items(), key=lambda item: int(item[0]))
        xs = [distance for _, (distance, _) in ordered]
        ys = [gain for _, (_, gain) in ordered]
        ax.scatter(xs, ys, label=model)
        for client, (distance, gain) in ordered:
            ax.annotate(client, (distance, gain), textcoords="offset points", xytext=(4, 4))
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xlabel("client's Jensen–Shannon divergence from the global mix")
    ax.set_ylabel("model − own Local model, accuracy on its test share")
    ax.set_title("Who gains, and from which model")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_learning_curves(
    curves: list[list[tuple[int, float]]],
    references: dict[str, float],
    metric: str,
    path: Path,
) -> None:
    """FedIT's held-out ``metric`` per round (one curve per seed: their mean, and a min–max band
    when there are several) with horizontal lines for the reference models."""
    fig, ax = plt.subplots(figsize=(6, 4))
    rounds = sorted({r for curve in curves for r, _ in curve})
    by_round = [[v for curve in curves for r, v in curve if r == x] for x in rounds]
    mean = [sum(values) / len(values) for values in by_round]
    label = "FedIT" + (f" (mean of {len(curves)} seeds, band: min–max)" if len(curves) > 1 else "")
    ax.plot(rounds, mean, marker="o", color="tab:blue", label=label)
    if len(curves) > 1:
        lows = [min(values) for values in by_round]
        highs = [max(values) for values in by_round]
        ax.fill_between(rounds, lows, highs, color="tab:blue", alpha=0.2)
    styles = ["--", ":", "-."]
    for index, (name, value) in enumerate(references.items()):
        ax.axhline(value, linestyle=styles[index % 3], color=f"C{index + 1}", label=name)
    ax.set_xlabel("round (0 = base model)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"held-out {metric}")
    ax.set_title(f"FedIT's held-out {metric} per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path)
