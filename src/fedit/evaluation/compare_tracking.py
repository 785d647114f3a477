"""``report_to`` in ``fedit compare``: every model a run of its own, in the study's group.

FedIT's run is the federated run itself (its rounds, then its scores); base, start, each
Local-k and Centralized get a run each with their scores (``compare/<suite>/<metric>``) at
step ``federation.rounds``, so they line up with FedIT's last round. With ``compare.seeds``
each seed's models are separate runs (``fedit seed 3``) of the one study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedit.config import Config
from fedit.experiment import RunOutcome
from fedit.reporting.summary import metric_view, table_metrics
from fedit.tracking import Tracking, model_identity
from fedit.tracking.records import report_files


def fedit_tracking(cfg: Config, study_dir: Path) -> Tracking:
    """FedIT's run; opened by ``run_experiment`` (nothing is written before)."""
    return Tracking(cfg, model_identity(cfg, study_dir, "fedit"))


def log_models(
    cfg: Config,
    study_dir: Path,
    fedit: Tracking,
    fedit_run: RunOutcome,
    results: dict[str, dict[str, dict[str, Any]]],
    compare_dir: Path,
) -> None:
    """Each model's scores in its own run; FedIT's also gets the comparison's report."""
    if not cfg.report_to:
        return
    step = cfg.federation.rounds
    if not fedit.opened:  # a finished Flower run, which compare reads rather than runs
        fedit.open()
        fedit.log_history(fedit_run.history)
        fedit.log_outcome(fedit_run.history, fedit_run.run_dir)
    for model, suites in results.items():
        scores = suite_scores(suites)
        if model == "fedit":
            fedit.log_scores(scores, step)
            fedit.log_files(report_files(compare_dir), "compare")
            continue
        with Tracking(cfg, model_identity(cfg, study_dir, model)) as tracking:
            tracking.open()
            tracking.log_scores(scores, step)


def suite_scores(suites: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``compare/<suite>/<metric>`` for each table metric of each suite (as in the report)."""
    scores = {}
    for suite, result in suites.items():
        view = metric_view(result)
        for metric, _, _ in table_metrics(result):
            scores[f"compare/{suite}/{metric}"] = float(view[metric])
    return scores
