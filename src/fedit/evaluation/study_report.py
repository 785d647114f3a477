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
    clients = summary.get("per_client")
    if clients:
        lines += worst_client_findings(clients)
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
    if clients:
        lines += ["", *per_client_lines(clients)]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report


def _seeds(row: dict[str, Any]) -> str:
    return ", ".join(f"{d:+.3f}" for d in row["per_seed"])


def worst_client_findings(clients: dict[str, Any]) -> list[str]:
    """One finding per model and metric: does it lift the worst client over FedIT and Local?"""
    lines = []
    for metric in FINDING_METRICS:
        rows = [r for r in clients["paired"] if r["metric"] == metric and r["stat"] == "worst"]
        for model in dict.fromkeys(r["model"] for r in rows if r["model"] not in ("fedit", "base")):
            parts = [
                f"worst − {r['vs']}'s = {r['mean']:+.3f} {_span(r)} (per seed {_seeds(r)})"
                for r in rows
                if r["model"] == model
            ]
            lifted = model in clients["lifts_worst"][metric]
            head = "lifts" if lifted else "does not lift, at this size,"
            lines.append(
                f"- per client: {model} {head} the worst client on {metric}: {'; '.join(parts)}."
            )
    return lines


def per_client_lines(clients: dict[str, Any]) -> list[str]:
    """The per-client section: each model's mean, worst and std over clients, and the pairs."""
    lines = [
        "## Per client: each model on each client's own test share",
        "",
        "Over clients, per seed, then a 95% t-interval over seeds (mean ± half-width). `local` "
        "is each client's own Local model. Paired differences: the mean per-client score with "
        "a paired bootstrap over seeds x clients; the worst client with a t-interval over the "
        "per-seed differences (each seed's value is shown: three seeds make wide intervals).",
        "",
    ]
    for metric in ("accuracy", "loss"):
        lines += [
            f"**{metric}**",
            "",
            "| model | mean over clients | worst client | std over clients |",
            "|---|---:|---:|---:|",
        ]
        for model, metrics in clients["models"].items():
            cells = [_cell(metrics[metric][stat]) for stat in ("mean", "worst", "std")]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "| model | vs | of | difference | 95% interval | verdict |",
            "|---|---|---|---:|---|---|",
        ]
        for row in [r for r in clients["paired"] if r["metric"] == metric]:
            lines.append(
                f"| {row['model']} | {row['vs']} | {row['stat']} | {row['mean']:+.3f} "
                f"| {_span(row)} | {row['verdict']} |"
            )
        lines.append("")
    return lines
