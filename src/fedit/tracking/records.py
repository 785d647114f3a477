"""What a tracker is given: a round's public record as scalars, the config, the results.

Everything here reads the round record that ``metrics.jsonl`` holds, which under differential
privacy is already the public one (``server/privacy.PrivacyRun.public_record``: no per-client
training loss, and no selection when it is secret). Nothing else of a round reaches a tracker,
so a tracker never shows what the run's own files do not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedit.config import Config, flatten
from fedit.reporting.summary import summary_rows
from fedit.tracking.tracker import Scalar

# Sections of a round record logged as scalars under their own name ("eval/loss", ...).
SCALAR_SECTIONS = ("eval", "seconds", "communication", "privacy")
# Columns of the results table, in this order, where some row has them.
RESULT_METRICS = (
    "loss",
    "perplexity",
    "accuracy",
    "exact_match",
    "token_f1",
    "rouge_l",
    "reward_accuracy",
    "reward_margin",
    "backdoor_asr",
)


def round_metrics(record: dict[str, Any]) -> dict[str, float]:
    """One round's record as ``{name: value}``: held-out loss and accuracy, bytes, seconds, ε,
    the aggregation's verdicts and quantization, and each client's training loss where the
    record holds it (``train_loss/client_K`` and their mean)."""
    metrics: dict[str, float] = {}
    for section in SCALAR_SECTIONS:
        metrics |= _numbers(section, record.get(section) or {}, count_lists=False)
    # Robust verdicts (rejected clients, scores, detection), secure aggregation's fields and the
    # simulated clock; a list (the rejected clients, the attackers, who is in a secure sum, the
    # late clients) counts its members.
    for section in ("aggregation", "system"):
        metrics |= _numbers(section, record.get(section) or {}, count_lists=True)
    if isinstance(record.get("lr"), (int, float)):
        metrics["lr"] = float(record["lr"])
    for key in ("selected_clients", "dropped_clients"):
        if isinstance(record.get(key), list):
            metrics[f"clients/{key.split('_')[0]}"] = float(len(record[key]))
    losses = record.get("train_loss") or {}
    for client, loss in losses.items():
        metrics[f"train_loss/client_{client}"] = float(loss)
    if losses:
        metrics["train_loss/mean"] = sum(float(v) for v in losses.values()) / len(losses)
    return metrics


def _numbers(prefix: str, tree: dict[str, Any], count_lists: bool) -> dict[str, float]:
    """The numeric leaves of a nested record, keyed ``prefix/key/subkey``."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            out |= _numbers(name, value, count_lists)
        elif isinstance(value, (int, float)):  # bool included: a flag logs as 0 or 1
            out[name] = float(value)
        elif isinstance(value, list) and count_lists:
            out[name] = float(len(value))
    return out


def flat_config(cfg: Config) -> dict[str, Scalar]:
    """The resolved config as hyperparameters: dotted keys, lists and nulls as text."""
    return {
        key: value if isinstance(value, (str, int, float, bool)) else str(value)  # lists, None
        for key, value in flatten(cfg.to_dict()).items()
    }


def results_table(history: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """The final results (``reporting/summary.summary_rows``): base and final global adapter."""
    rows = summary_rows(history)
    metrics = [m for m in RESULT_METRICS if any(m in evaluation for _, evaluation in rows)]
    table = [[label, *(evaluation.get(m) for m in metrics)] for label, evaluation in rows]
    return ["model", *metrics], table


def report_files(folder: Path) -> list[Path]:
    """A report and its plots: ``report.md`` and the PNGs beside it."""
    report = folder / "report.md"
    return ([report] if report.is_file() else []) + sorted(folder.glob("*.png"))
