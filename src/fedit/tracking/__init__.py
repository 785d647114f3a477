"""Experiment tracking (``report_to``): a run's public record logged to TensorBoard, MLflow or W&B.

``session.Tracking`` is a ``RunObserver``: it starts the configured trackers once the run
directory exists, logs each round's public ``metrics.jsonl`` record (``records.round_metrics``)
and, at the end, the results table, report, plots and adapter. Each tracker is one module that
imports its library only when started (the ``track`` extra); a tracker that fails is dropped
with one warning and the run goes on. ``docs/tracking.md`` lists what is logged and where.
"""

from fedit.tracking.session import TRACKERS, Tracking
from fedit.tracking.tracker import RunIdentity, model_identity, run_identity

__all__ = ["TRACKERS", "RunIdentity", "Tracking", "model_identity", "run_identity"]
