"""``study/report.md``: a multi-seed ``fedit compare`` as means with intervals, and findings that
claim a difference only when its interval excludes zero."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedit.config import Config
from fedit.evaluation.compare_report import learning_curves
from fedit.evaluation.intervals import BOOTSTRAP_METHOD, T_METHOD
from fedit.io import atomic_write_text

HEADLINE = ("accuracy", "token_f1", "rouge_l", "loss")  # the tables, in this order
FINDING_METRICS = ("accuracy", "loss")  # the findings: exact answers, and the loss


def _cell(interval: dict[str, Any], digits: int = 3) -> str:
    mean = f"{interval['mean']:.{digits}f}"
    if interval["low"] is None:
        return mean
    return f"{mean} ± {(interval['high'] - interval['low']) / 2:.{digits}f}"


def _span(row: dict[str, Any]) -> str:
    if row["low"] is None:
        return "– (one seed)"
    return f"[{row['low']:+.3f}, {row['high']:+.3f}]"


def finding(row: dict[str, Any], summary: dict[str, Any]) -> str:
    """One sentence on FedIT against one opponent on one metric."""
    seeds = len(summary["seeds"])
    difference = f"FedIT − {row['opponent']} = {row['mean']:+.3f} {_span(row)}"
    if row["verdict"] == "FedIT better":
        return f"FedIT beats {row['opponent']} on {row['metric']}: {difference}."
    if row["verdict"] == "FedIT worse":
        return f"FedIT is worse than {row['opponent']} on {row['metric']}: {difference}."
    text = f"No significant difference at this size between FedIT and {row['opponent']} on "
    text += f"{row['metric']}: {difference}"
    resolve = row.get("resolve")
    if resolve:
        sizes = [n for n in summary["num_test"].values() if n]
        examples = round(sum(sizes) / len(sizes)) if sizes else 0
        parts = [f"about {resolve['seeds']} seeds at {examples} test examples each"]
        if resolve["examples_per_seed"] is not None:
            parts.append(f"about {resolve['examples_per_seed']} test examples per seed")
        if resolve["seeds"] is not None:
            text += "; " + " or ".join(parts) + " would resolve it if the difference held"
        if not resolve["seed_variance_known"]:
            text += " (with one seed the seed-to-seed spread is unmeasured)"
    if seeds < 2 and row["metric"] == "loss":
        text += " (loss needs 2 or more seeds for an interval)"
    return text + "."


def write_study_report(
    out: Path,
    cfg: Config,
    summary: dict[str, Any],
    histories: list[list[dict[str, Any]]],
    references: dict[str, dict],
) -> Path:
    """Write ``report.md`` and FedIT's learning curves (a band over seeds) into ``out``."""
    seeds = summary["seeds"]
    lines = [
        f"# FedIT vs base, Local-k and Centralized over {len(seeds)} seeds",
        "",
        f"Seeds {', '.join(map(str, seeds))}: each is a whole `fedit compare` in "
        f"`{cfg.output_dir}/seed-<s>/` (its own split, partition, LoRA init, selection and "
        f"training). Test examples per seed: "
        + ", ".join(f"{s}: {n}" for s, n in summary["num_test"].items())
        + ".",
        "",
        f"Model means carry a 95% {T_METHOD} (mean ± half-width). FedIT's paired differences "
        f"use a 95% {BOOTSTRAP_METHOD} (10,000 resamples, percentile) for per-example metrics, "
        f"and a {T_METHOD} of the per-seed differences for loss. `local#k` is, in each seed, "
        "the client FedIT trained k-th most; `best local` is each seed's best Local-k on that "
        "metric, chosen on the test set (which favours it).",
        "",
        "| seed | Local-k clients | minutes |",
        "|---|---|---:|",
    ]
    for seed in seeds:
        chosen = summary["local_clients"][str(seed)]
        minutes = sum(summary["seconds"][str(seed)].values()) / 60
        lines.append(
            f"| {seed} | {', '.join(f'{r} = {n}' for r, n in chosen.items()) or '–'} "
            f"| {minutes:.1f} |"
        )
    lines += ["", "## Findings", ""]
    for suite, data in summary["suites"].items():
        for row in data["paired"]:
            if row["metric"] in FINDING_METRICS:
                lines.append(f"- {suite}: {finding(row, summary)}")
    lines += ["", "## Learning curves", ""] + learning_curves(histories, references, out)
    for suite, data in summary["suites"].items():
        lines += ["", f"## {suite}", ""]
        for metric in [m for m in HEADLINE if m in data["models"]["fedit"]]:
            categories = list(data["models"]["fedit"][metric]["by_category"])
            lines += [f"**{metric}** (mean ± 95% half-width over seeds)", ""]
            lines.append("| model | overall | " + " | ".join(categories) + " |")
            lines.append("|---|" + "---:|" * (len(categories) + 1))
            for role, metrics in data["models"].items():
                cells = [_cell(metrics[metric]["overall"])]
                cells += [_cell(metrics[metric]["by_category"][c], 2) for c in categories]
                lines.append(f"| {role} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += [
            "**FedIT's paired differences**",
            "",
            "| vs | metric | FedIT − vs | 95% interval | verdict |",
            "|---|---|---:|---|---|",
        ]
        for row in data["paired"]:
            lines.append(
                f"| {row['opponent']} | {row['metric']} | {row['mean']:+.3f} | {_span(row)} "
                f"| {row['verdict']} |"
            )
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report
