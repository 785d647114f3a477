"""What every tracker does, and the names and folder a tracked run is logged under."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedit.config import Config

EXTRA = "track"  # pip install fedit[track]: tensorboard, mlflow-skinny, wandb
PLAIN_EXPERIMENT = "fedit"  # MLflow experiment / W&B project of a plain `fedit run`

Scalar = str | int | float | bool


@dataclass(frozen=True)
class RunIdentity:
    """Where and under which names one tracked run is logged.

    A plain run is its own: named after its folder, with its local stores inside it. In
    ``fedit compare`` every model is a run of the study's experiment (MLflow) and group (W&B),
    with the stores in the study's folder, so one TensorBoard, MLflow or W&B view holds them all.
    """

    root: Path  # local stores: ROOT/tensorboard/FOLDER, ROOT/mlflow.db, ROOT/wandb/
    name: str  # the run's name in the tracker
    experiment: str  # MLflow experiment; W&B group when ``group`` is set
    folder: str = ""  # the run's TensorBoard folder under ROOT/tensorboard
    group: str | None = None  # the study's name in `fedit compare`
    tags: dict[str, str] = field(default_factory=dict)


def run_identity(run_dir: Path) -> RunIdentity:
    """A plain ``fedit run``: named after its folder, stores inside it."""
    return RunIdentity(root=run_dir, name=run_dir.name, experiment=PLAIN_EXPERIMENT)


def model_identity(cfg: Config, study_dir: Path, model: str) -> RunIdentity:
    """One model of ``fedit compare`` (base, local-k, fedit, centralized), in the study's group.

    ``study_dir`` is the comparison's ``output_dir``; with ``compare.seeds`` it is the study's
    and ``cfg`` one seed's, so each seed's models are runs of their own in the same group.
    """
    study = study_dir.name
    tags = {"study": study, "model": model, "seed": str(cfg.seed)}
    if Path(cfg.output_dir) != study_dir:  # one seed of a study
        name, folder = f"{model} seed {cfg.seed}", f"seed-{cfg.seed}/{model}"
    else:
        name, folder = model, model
    return RunIdentity(study_dir, name, study, folder, study, tags)


class Tracker:
    """One tracking backend. Subclasses import their library in ``start``, never at import."""

    def start(self, identity: RunIdentity, params: dict[str, Scalar]) -> None:
        """Open the run and record the resolved config as its hyperparameters."""
        raise NotImplementedError

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Scalars at one step (the round number)."""
        raise NotImplementedError

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        """A small table (the final results), once."""
        raise NotImplementedError

    def log_files(self, files: list[Path], folder: str) -> None:
        """Report and plots as artifacts under ``folder``."""
        raise NotImplementedError

    def log_adapter(self, adapter: Path) -> None:
        """The global adapter folder, where the tracker keeps models (MLflow)."""

    def close(self, failed: bool) -> None:
        """End the run, marked failed when the experiment raised."""
        raise NotImplementedError
