"""Weights & Biases: offline unless ``WANDB_MODE`` is set, files under ``ROOT/wandb/``.

An offline run is uploaded later with ``wandb sync ROOT/wandb/offline-run-*``. The project is
``WANDB_PROJECT`` when set, else ``fedit``; ``fedit compare`` puts a study's models in one group.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from fedit.tracking.tracker import PLAIN_EXPERIMENT, RunIdentity, Scalar, Tracker


class WandbTracker(Tracker):
    """One W&B run: config, history per round, results table, report and plots as files."""

    def start(self, identity: RunIdentity, params: dict[str, Scalar]) -> None:
        import wandb

        identity.root.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(
            silent=True,  # library code logs; W&B's own banner would print
            console="off",
            disable_git=True,
            save_code=False,
            x_disable_stats=True,
            x_disable_meta=True,
        )
        self.wandb = wandb
        self.step = 0  # the last step logged: W&B drops anything logged at an earlier one
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or PLAIN_EXPERIMENT,
            group=identity.group,
            name=identity.name,
            tags=[f"{key}:{value}"[:64] for key, value in identity.tags.items()],
            config=params,
            dir=str(identity.root),
            mode=os.environ.get("WANDB_MODE") or "offline",  # type: ignore[arg-type]
            settings=settings,
            reinit="create_new",  # fedit compare keeps FedIT's run open beside the others
        )

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)
        self.step = step

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        header: list[str | int] = [*columns]
        # At the last step, not the next: a later log_metrics at that step must still count.
        self.run.log({name: self.wandb.Table(columns=header, data=rows)}, step=self.step)
        for row in rows:
            for column, value in zip(columns[1:], row[1:], strict=True):
                self.run.summary[f"{name}/{row[0]}/{column}"] = value

    def log_files(self, files: list[Path], folder: str) -> None:
        # Copied into the run's own files folder, which wandb sync uploads: a link would break
        # when the run folder moves.
        target = Path(self.run.dir) / folder
        target.mkdir(parents=True, exist_ok=True)
        for path in files:
            shutil.copy2(path, target / path.name)
            self.run.save(str(target / path.name), base_path=self.run.dir, policy="end")

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)
