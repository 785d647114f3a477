"""Markdown summaries of suite results: headline numbers and per-category tables.

Each suite kind names its table metrics here once; ``fedit eval`` (``eval/summary.md``) and
``fedit compare`` (``compare/report.md``) both read them.
"""

from __future__ import annotations

from typing import Any

# kind -> (metric, per-category key, label); the first one is the suite's headline metric.
TABLE_METRICS: dict[str, list[tuple[str, str, str]]] = {
    "heldout": [
        ("accuracy", "accuracy_by_category", "exact-answer accuracy"),
        ("rouge_l", "rouge_l_by_category", "ROUGE-L"),
        ("token_f1", "token_f1_by_category", "token F1"),
        ("loss", "loss_by_category", "loss (lower is better)"),
    ],
    "preference": [
        ("reward_accuracy", "reward_accuracy_by_category", "reward accuracy"),
        ("reward_margin", "reward_margin_by_category", "mean reward margin"),
        ("accuracy", "accuracy_by_category", "exact-answer accuracy"),
        ("chosen_logp", "chosen_logp_by_category", "chosen log-prob"),
        ("rejected_logp", "rejected_logp_by_category", "rejected log-prob"),
    ],
    "mc": [("accuracy", "accuracy_by_subject", "accuracy")],
    "gsm8k": [("accuracy", "accuracy_by_category", "final-number accuracy")],
    "judge": [("score", "score_by_category", "judge score (1-10)")],
}
TABLE_METRICS["instructions"] = TABLE_METRICS["heldout"]


def metric_view(result: dict[str, Any]) -> dict[str, Any]:
    """The dict that holds a result's table metrics: judge grades live under ``single``."""
    if result.get("kind") == "judge":
        return result.get("single") or {}
    return result


def table_metrics(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The (metric, per-category key, label) rows this result has values for."""
    rows = TABLE_METRICS.get(result.get("kind", ""), [])
    if result.get("kind") == "lm_eval":  # lm-eval's own metric names; its tasks are the columns
        rows = [(name, f"{name}_by_category", name) for name in result.get("metric_names", [])]
    return [row for row in rows if metric_view(result).get(row[0]) is not None]


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def category_table(rows: list[tuple[str, dict[str, Any]]], metric: str, by_key: str) -> list[str]:
    """A markdown table: one row per (label, result), one column per category, then overall."""
    views = [(label, metric_view(result)) for label, result in rows]
    categories = sorted({c for _, view in views for c in (view.get(by_key) or {})})
    lines = [
        "| model | " + " | ".join(categories + ["overall"]) + " |",
        "|---|" + "---:|" * (len(categories) + 1),
    ]
    for label, view in views:
        by_category = view.get(by_key) or {}
        cells = [fmt(by_category.get(c)) for c in categories] + [fmt(view.get(metric))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def judge_notes(result: dict[str, Any]) -> list[str]:
    """Judge accounting: judgments, spread, parse and request failures, pairwise win rates."""
    lines = []
    single = result.get("single")
    if single:
        lines.append(
            f"- single-answer grading by `{single.get('judge_model')}`: mean "
            f"{fmt(single.get('score'))} ± {fmt(single.get('score_std'))} over "
            f"{single.get('num_judgments')} judgments; {single.get('parse_failures')} "
            f"unparseable, {single.get('request_failures')} failed requests"
        )
    for opponent, pair in (result.get("pairwise") or {}).items():
        lines.append(
            f"- pairwise vs {opponent} (both answer orders): win rate "
            f"{fmt(pair.get('win_rate'))} ({pair.get('wins')} wins, {pair.get('ties')} ties, "
            f"{pair.get('losses')} losses, {pair.get('inconsistent')} order-inconsistent); "
            f"{pair.get('parse_failures')} unparseable, {pair.get('request_failures')} failed"
        )
    return lines


def suite_summary(result: dict[str, Any], label: str) -> list[str]:
    """The markdown section of one suite result for one model."""
    lines = [f"## {result['suite']} ({result['kind']})", ""]
    count = result.get("num_examples") or result.get("num_questions")
    if count is not None:
        lines += [f"{count} items.", ""]
    for metric, by_key, title in table_metrics(result):
        lines += [f"**{title}**", ""] + category_table([(label, result)], metric, by_key) + [""]
    if result.get("kind") == "judge":
        lines += judge_notes(result) or ["- not graded: no judge configured (eval.judge.base_url)"]
        lines.append("")
    if result.get("no_number"):
        lines += [f"- {result['no_number']} answers contained no number", ""]
    return lines


def summary_rows(history: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(label, eval metrics) for the base model and the final global adapter, when present."""
    rows = []
    base = next((r for r in history if r["round"] == 0 and r.get("eval")), None)
    if base:
        rows.append(("starting adapter" if base.get("start") else "base model", base["eval"]))
    trained = [r for r in history if r["round"] > 0 and r.get("eval")]
    if trained:
        method = "FedDPO" if "reward_accuracy" in trained[-1]["eval"] else "FedIT"
        rows.append((f"{method} (round {trained[-1]['round']})", trained[-1]["eval"]))
    return rows
