"""MLflow: a local SQLite store under the run folder unless ``MLFLOW_TRACKING_URI`` is set.

The store is ``ROOT/mlflow.db`` with artifacts in ``ROOT/mlartifacts`` (``mlflow ui
--backend-store-uri sqlite:///ROOT/mlflow.db``); MLflow's file store is in maintenance mode and
refuses to open by default. The experiment is ``MLFLOW_EXPERIMENT_NAME`` when set.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from fedit.tracking.tracker import RunIdentity, Scalar, Tracker

BATCH = 100  # MLflow's log_batch takes at most 100 params (and 1000 metrics) per call
PARAM_LENGTH = 6000  # MLflow's longest param value


def _key(name: str) -> str:
    """MLflow allows letters, digits, ``_ - . : / `` and spaces in a key."""
    return re.sub(r"[^\w\-.:/ ]", "_", name)


class MlflowTracker(Tracker):
    """One MLflow run: params, metrics per round, results table, report and adapter."""

    def start(self, identity: RunIdentity, params: dict[str, Scalar]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        artifacts = None
        if not uri:
            root = identity.root.resolve()
            root.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{root / 'mlflow.db'}"
            artifacts = (root / "mlartifacts").as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or identity.experiment
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            experiment_id = self.client.create_experiment(name, artifact_location=artifacts)
        run = self.client.create_run(experiment_id, run_name=identity.name, tags=identity.tags)
        self.run_id = run.info.run_id
        items = [Param(_key(k), str(v)[:PARAM_LENGTH]) for k, v in params.items()]
        for first in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, params=items[first : first + BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_key(k), v, now, step) for k, v in metrics.items()]
        for first in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, metrics=items[first : first + BATCH])

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        data = {column: [row[i] for row in rows] for i, column in enumerate(columns)}
        self.client.log_table(self.run_id, data=data, artifact_file=f"{name}.json")

    def log_files(self, files: list[Path], folder: str) -> None:
        for path in files:
            self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def log_adapter(self, adapter: Path) -> None:
        self.client.log_artifacts(self.run_id, str(adapter), artifact_path="global_adapter")

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
