"""``report_to``: the run's trackers as one observer, each dropped at its first failure.

A tracker is started once the run directory exists (bad input writes nothing), logs each
round's public record as it completes (and, first, the rounds already in ``metrics.jsonl``:
round 0 and, on resume, the rounds before), then the results, report and adapter. A tracker
that cannot start, or raises while logging, costs one warning line; the run goes on.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from types import TracebackType
from typing import Any

from fedit.config import Config
from fedit.io import read_jsonl
from fedit.server.observer import RunObserver
from fedit.tracking.mlflow_tracker import MlflowTracker
from fedit.tracking.records import flat_config, report_files, results_table, round_metrics
from fedit.tracking.tensorboard_tracker import TensorBoardTracker
from fedit.tracking.tracker import EXTRA, RunIdentity, Tracker
from fedit.tracking.wandb_tracker import WandbTracker

log = logging.getLogger(__name__)

TRACKERS: dict[str, type[Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "mlflow": MlflowTracker,
    "wandb": WandbTracker,
}


class Tracking(RunObserver):
    """The trackers of ``cfg.report_to`` for one run; with none configured, every call is free.

    Usable as a context manager: leaving it closes the trackers, marking the runs failed when
    an exception is on its way out.
    """

    def __init__(self, cfg: Config, identity: RunIdentity):
        self.cfg = cfg
        self.identity = identity
        self.trackers: dict[str, Tracker] = {}  # report_to's name -> the started tracker
        self.history_file: Path | None = None
        self.last_step = -1  # the last round logged: steps only rise (W&B drops older ones)
        self.opened = False

    def open(self, history_file: Path | None = None) -> None:
        """Start every configured tracker (once); ``history_file``: the run's metrics.jsonl."""
        self.history_file = history_file or self.history_file
        if self.opened:
            return
        self.opened = True
        params = flat_config(self.cfg) if self.cfg.report_to else {}
        for name in self.cfg.report_to:
            tracker = TRACKERS[name]()
            try:
                tracker.start(self.identity, params)
            except ImportError as err:
                log.warning(
                    "report_to: %s is not installed (%s); pip install fedit[%s] to use it; "
                    "the run goes on without it",
                    name,
                    err.name or err,
                    EXTRA,
                )
            except Exception as err:  # any failure of a tracker must spare the run
                log.warning("report_to: %s failed to start: %s", name, _one_line(err))
            else:
                self.trackers[name] = tracker

    def on_run_start(self, first_round: int, last_round: int) -> None:
        if self.history_file is not None and self.history_file.is_file():
            # Only rounds before the first that runs: a record of a round that crashed before
            # its completion marker is redone, and logged when it is.
            done = read_jsonl(self.history_file)
            self.log_history([record for record in done if record["round"] < first_round])

    def on_round_end(self, record: dict[str, Any]) -> None:
        self.log_history([record])

    def log_history(self, history: list[dict[str, Any]]) -> None:
        """Each public round record not logged yet, at step = its round."""
        for record in history:
            if record["round"] > self.last_step:
                self._each("log_metrics", round_metrics(record), record["round"])
                self.last_step = record["round"]

    def log_outcome(self, history: list[dict[str, Any]], run_dir: Path) -> None:
        """Once at the end: the results table, report.md and plots, the global adapter."""
        columns, rows = results_table(history)
        if rows:
            self._each("log_table", "results", columns, rows)
        if files := report_files(run_dir):
            self._each("log_files", files, "report")
        if (run_dir / "global_adapter").is_dir():
            self._each("log_adapter", run_dir / "global_adapter")

    def log_scores(self, scores: dict[str, float], step: int) -> None:
        """A model's scores in ``fedit compare`` (``compare/<suite>/<metric>``)."""
        if scores:
            self._each("log_metrics", scores, max(step, self.last_step))

    def log_files(self, files: list[Path], folder: str) -> None:
        if files:
            self._each("log_files", files, folder)

    def close(self, failed: bool = False) -> None:
        """End every tracker's run; safe to call twice."""
        trackers, self.trackers = self.trackers, {}
        for name, tracker in trackers.items():
            try:
                tracker.close(failed)
            except Exception as err:
                log.warning("report_to: %s failed to close: %s", name, _one_line(err))

    def __enter__(self) -> Tracking:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(failed=error is not None)

    def _each(self, method: str, *args: Any) -> None:
        """Call ``method`` on every tracker; one that raises is warned of and dropped."""
        for name, tracker in list(self.trackers.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception as err:
                log.warning(
                    "report_to: %s failed while logging (%s); the run goes on without it",
                    name,
                    _one_line(err),
                )
                del self.trackers[name]
                with contextlib.suppress(Exception):  # already reported once
                    tracker.close(failed=True)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
