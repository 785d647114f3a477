"""``compare/report.md``: one table per suite metric (rows: models, columns: categories and
overall), a bar chart per suite, and findings computed from the numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedit.config import Config
from fedit.evaluation.intervals import Interval, paired_bootstrap
from fedit.evaluation.per_client import per_client_section
from fedit.io import atomic_write_text
from fedit.reporting.plots import plot_compare, plot_learning_curves
from fedit.reporting.summary import category_table, fmt, judge_notes, metric_view, table_metrics

CURVE_METRICS = ("accuracy", "loss")


def write_compare_report(
    out: Path,
    cfg: Config,
    contenders: list[Any],
    results: dict[str, dict[str, dict[str, Any]]],
    table: dict[str, Any],
    history: list[dict[str, Any]] | None = None,
    per_client: dict[str, Any] | None = None,
) -> tuple[Path, str]:
    """Write ``report.md``, ``<suite>.png`` and the learning curves into ``out``; with
    ``per_client`` (data.client_test_fraction), the per-client section and its plot too.

    Returns:
        The report's path and a plain-text overview (headline metric per model and suite).
    """
    names = [c.name for c in contenders]
    lines = [
        "# FedIT vs base, Local-k and Centralized",
        "",
        f"Config: `{cfg.output_dir}/config.yaml` (model `{cfg.model.name}`, seed {cfg.seed}). "
        f"{table.get('num_train')} training examples over {cfg.federation.num_clients} clients, "
        f"{table.get('num_test')} held out; every model is scored on the same split.",
        "",
        "| model | trained on | optimizer steps |",
        "|---|---|---:|",
    ]
    lines += [f"| {c.name} | {c.description} | {c.steps} |" for c in contenders]
    lines += ["", "## Findings", ""] + findings(names, results) + [""]
    if history:
        lines += learning_curves([history], reference_lines([results]), out)
    if per_client:
        lines += per_client_section(per_client, table, out)
    suites = list(results[names[0]])
    for suite in suites:
        rows = [(name, results[name][suite]) for name in names]
        first = rows[0][1]
        lines += [f"## {suite} ({first['kind']})", ""]
        for index, (metric, by_key, title) in enumerate(table_metrics(first)):
            lines += [f"**{title}**", ""] + category_table(rows, metric, by_key) + [""]
            if index == 0:
                chart = f"{suite}.png"
                plot_compare(rows, metric, by_key, title, out / chart)
                lines += [f"![{suite}: {title}]({chart})", ""]
        if first["kind"] == "judge":
            for name, result in rows:
                lines += [f"{name}:"] + (judge_notes(result) or ["- not graded"]) + [""]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return report, overview(names, results)


def reference_lines(runs: list[dict[str, dict[str, dict[str, Any]]]]) -> dict[str, dict]:
    """metric -> {reference model: value} on the held-out suite, averaged over ``runs`` (one
    per seed); the best Local-k is each run's best on that metric."""
    out: dict[str, dict[str, float]] = {}
    for metric in CURVE_METRICS:
        values: dict[str, list[float]] = {}
        for results in runs:
            heldout = {name: r["heldout"] for name, r in results.items() if "heldout" in r}
            local = [r[metric] for name, r in heldout.items() if name.startswith("local-")]
            if local:
                best = min(local) if metric == "loss" else max(local)
                values.setdefault("best Local-k", []).append(best)
            for name in ("base", "centralized"):
                if metric in heldout.get(name, {}):
                    values.setdefault(name, []).append(heldout[name][metric])
        out[metric] = {name: sum(v) / len(v) for name, v in values.items() if len(v) == len(runs)}
    return out


def learning_curves(
    histories: list[list[dict[str, Any]]], references: dict[str, dict], out: Path
) -> list[str]:
    """FedIT's held-out accuracy and loss per round (a band over seeds) against the references."""
    lines = []
    for metric in CURVE_METRICS:
        curves = [
            [(r["round"], r["eval"][metric]) for r in history if metric in (r.get("eval") or {})]
            for history in histories
        ]
        if not all(curves):
            continue
        chart = f"curve_{metric}.png"
        plot_learning_curves(curves, references.get(metric, {}), metric, out / chart)
        lines += [f"![FedIT's held-out {metric} per round]({chart})", ""]
    return lines


def _headline(result: dict[str, Any]) -> tuple[str, float | None]:
    metrics = table_metrics(result)
    if not metrics:
        return "", None
    metric = metrics[0][0]
    return metric, metric_view(result).get(metric)


def findings(names: list[str], results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Plain statements on each suite's headline metric: FedIT against each Local-k, the base
    model and Centralized."""
    if "fedit" not in names:
        return []
    lines = []
    for suite in results["fedit"]:
        metric, fedit = _headline(results["fedit"][suite])
        if fedit is None:
            continue
        lower_is_better = metric == "loss"
        local: dict[str, float] = {}
        for name in names:
            value = _headline(results[name][suite])[1] if name.startswith("local-") else None
            if value is not None:
                local[name] = value
        parts = [f"- **{suite}** ({metric}): FedIT {fmt(fedit)}"]
        if local:
            best_name = (min if lower_is_better else max)(local, key=lambda n: local[n])
            best = local[best_name]
            ahead = (fedit < best) if lower_is_better else (fedit > best)
            interval = _paired(results["fedit"][suite], results[best_name][suite], metric)
            if fedit == best:
                verdict = "ties the best Local-k"
            elif interval is not None and not interval.excludes_zero():
                verdict = f"{'leads' if ahead else 'trails'} the best Local-k, not significantly"
            elif ahead:
                verdict = "beats every Local-k"
            else:
                verdict = "does not beat every Local-k"
            detail = f"best {best_name} {fmt(best)}"
            if interval is not None:
                detail += (
                    f"; FedIT − {best_name} {interval.mean:+.3f}, 95% interval "
                    f"[{interval.low:+.3f}, {interval.high:+.3f}], paired bootstrap over the test "
                    "examples (one seed; compare.seeds adds seeds)"
                )
            parts.append(f"{verdict} ({detail})")
        for other in ("base", "centralized"):
            if other in results:
                value = _headline(results[other][suite])[1]
                if value is not None:
                    parts.append(f"{other} {fmt(value)}")
        lines.append("; ".join(parts))
    return lines


def _paired(fedit: dict[str, Any], other: dict[str, Any], metric: str) -> Interval | None:
    """FedIT minus ``other`` on ``metric``, bootstrapped over the test examples, when both
    results carry per-example scores (``compare.seeds`` adds the seed-to-seed spread)."""
    a = fedit.get("per_example", {}).get(metric)
    b = other.get("per_example", {}).get(metric)
    if not a or not b or len(a) != len(b):
        return None
    return paired_bootstrap([np.asarray(a) - np.asarray(b)])


def overview(names: list[str], results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Headline metric per suite (columns) and model (rows) as a plain-text table."""
    suites = list(results[names[0]])
    headers = [f"{s} {_headline(results[names[0]][s])[0]}" for s in suites]
    width = max(len(n) for n in names) + 2
    lines = ["model".ljust(width) + "  ".join(h.rjust(max(10, len(h))) for h in headers)]
    for name in names:
        cells = [
            fmt(_headline(results[name][s])[1]).rjust(max(10, len(h)))
            for s, h in zip(suites, headers, strict=True)
        ]
        lines.append(name.ljust(width) + "  ".join(cells))
    return "\n".join(lines)
