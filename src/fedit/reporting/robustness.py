"""The report's "Attacks and defence" section, read from the rounds' ``aggregation`` records."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fedit.reporting.summary import summary_rows


def robustness_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Attackers and rejections over the run, and the defence's detection precision and recall.

    A (round, client) pair counts once: a true positive is an attacker the defence rejected,
    a false positive an honest client it rejected, a false negative an attacker it let through.
    Precision is None when nothing was rejected, recall None when nobody attacked.
    """
    rounds = [r for r in history if r["round"] > 0]
    attacked: Counter[int] = Counter()
    rejected: Counter[int] = Counter()
    participated: Counter[int] = Counter()
    true_pos = false_pos = false_neg = 0
    methods = set()
    for record in rounds:
        aggregation = record.get("aggregation") or {}
        attackers = set(aggregation.get("attackers") or [])
        robust = aggregation.get("robust") or {}
        flagged = set(robust.get("rejected") or [])
        if robust:
            methods.add(robust["method"])
        participated.update(int(c) for c in record.get("train_loss", {}))
        attacked.update(attackers)
        rejected.update(flagged)
        true_pos += len(flagged & attackers)
        false_pos += len(flagged - attackers)
        false_neg += len(attackers - flagged)
    return {
        "methods": sorted(methods),
        "participated": dict(participated),
        "attacked": dict(attacked),
        "rejected": dict(rejected),
        "precision": true_pos / (true_pos + false_pos) if true_pos + false_pos else None,
        "recall": true_pos / (true_pos + false_neg) if true_pos + false_neg else None,
    }


def robustness_lines(history: list[dict[str, Any]], attack: str, method: str) -> list[str]:
    """Markdown for the report; empty when the run had neither an attack nor a defence."""
    if attack == "none" and method == "none":
        return []
    summary = robustness_summary(history)
    lines = ["## Attacks and defence", "", f"- Attack `{attack}`, defence `{method}`"]
    if summary["attacked"]:
        precision, recall = summary["precision"], summary["recall"]
        lines.append(
            f"- Detection against the true attackers: precision {_ratio(precision)}, "
            f"recall {_ratio(recall)}"
            + ("" if method != "none" else " (no defence: nothing is rejected)")
        )
    lines += _backdoor_lines(history)
    lines += ["", "| client | rounds | attacked | rejected |", "|---|---|---|---|"]
    for client in sorted(summary["participated"]):
        lines.append(
            f"| {client} | {summary['participated'][client]} | "
            f"{summary['attacked'].get(client, 0)} | {summary['rejected'].get(client, 0)} |"
        )
    return lines


def _backdoor_lines(history: list[dict[str, Any]]) -> list[str]:
    """The backdoor's success rate for the rows of the report's summary (start and final)."""
    rows = [(label, e) for label, e in summary_rows(history) if "backdoor_asr" in e]
    if not rows:
        return []
    text = ", ".join(f"{label} {e['backdoor_asr']:.2f}" for label, e in rows)
    return [
        "- Backdoor success rate (held-out prompts with the trigger whose answer contains "
        f"the target): {text}"
    ]


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"
