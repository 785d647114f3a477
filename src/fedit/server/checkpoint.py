"""The run directory: resolved config, per-round checkpoints, metrics, and resuming.

Layout::

    output_dir/
      config.yaml            fully resolved configuration
      run.json               the run's id and the first round of each attempt (resumes append)
      partition.json         clients x categories counts
      metrics.jsonl          one object per round (round 0 = the base model)
      privacy.json           with privacy.level set: the plan (z, C, δ, sampling, budget)
      checkpoints/round_NNN/ PEFT adapter, strategy.safetensors (server optimiser state, if
                             any) and round.json (written last: marks the round complete)
      global_adapter/        the final adapter, PEFT format
      clients/<id>/          client state kept in-process and in Flower simulation
                             (client.state; SCAFFOLD's c_i), never in a checkpoint
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from safetensors import safe_open
from safetensors.torch import load, save
from torch import Tensor

from fedit.client.state import ClientStateStore, Stamp
from fedit.config import Config, ConfigError, changed_settings, save_config
from fedit.integrity import safetensors_problem
from fedit.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    write_jsonl,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
ROUND_MARKER = "round.json"
STRATEGY_FILE = "strategy.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
RUN_FILE = "run.json"

# Keys that may differ between a run and its resumption: they do not change what was trained.
RESUMABLE_DIFFERENCES = ("resume", "overwrite", "federation.rounds", "output_dir", "report_to")
# Whole sections that only say how to score or compare a run, never what it trains.
RESUMABLE_SECTIONS = ("eval.", "compare.")


def _may_differ(key: str) -> bool:
    return key in RESUMABLE_DIFFERENCES or key.startswith(RESUMABLE_SECTIONS)


@dataclass
class ResumePoint:
    """Where a resumed run picks up."""

    next_round: int
    adapter_dir: Path | None
    history: list[dict[str, Any]]
    strategy_state: dict[str, Tensor]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``.

    Raises:
        ConfigError: A line that is not a JSON object, named as ``metrics.jsonl:LINE``.
    """
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"resume: {path}:{number} is not valid JSON ({err.msg}); repair or delete that line"
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("round"), int):
            raise ConfigError(
                f"resume: {path}:{number} is not a round's record (an object with a 'round'); "
                "repair or delete that line"
            )
        records.append(record)
    return records


def _checkpoint_problem(folder: Path) -> str | None:
    """Why a complete round's checkpoint cannot be loaded, or None."""
    if not (folder / ADAPTER_WEIGHTS).is_file():
        return f"{folder} has no {ADAPTER_WEIGHTS}"
    for path in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            return f"{path} is damaged ({problem})"
    return None


class RunDir:
    """All reads and writes of one run directory go through here, each write atomic."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def round_dir(self, server_round: int) -> Path:
        return self.checkpoints / f"round_{server_round:03d}"

    def is_run(self) -> bool:
        return (self.path / CONFIG_FILE).is_file()

    def check_writable(self) -> None:
        """Fail unless ``output_dir`` is, or can be created as, a folder that takes files.

        Tried for real (a temporary folder made and removed at once): permissions say little on
        ``/proc`` or a read-only mount, or to root.
        """
        existing = self.path
        try:
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
            if not existing.is_dir():
                raise ConfigError(
                    f"output_dir: {existing} is a file, not a folder; choose another output_dir"
                )
            os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".fedit-write-check-"))
        except OSError as err:
            raise ConfigError(
                f"output_dir: cannot create {self.path}: {existing} does not take new files "
                f"({err.strerror}); choose another output_dir"
            ) from None

    def check_fresh(self, overwrite: bool) -> None:
        """Refuse to mix a new run into an old one unless told to overwrite, and an
        ``output_dir`` that cannot be written."""
        self.check_writable()
        if not self.path.exists() or not any(self.path.iterdir()):
            return
        if not self.is_run():
            raise ConfigError(
                f"output_dir: {self.path} exists and is not a fedit run; choose another output_dir"
            )
        if not overwrite:
            raise ConfigError(
                f"output_dir: {self.path} already holds a run; pass resume=true to continue it "
                "or overwrite=true to replace it"
            )

    def start(self, cfg: Config, partition_table: dict[str, Any], overwrite: bool) -> None:
        """Create a fresh run directory with its config and partition."""
        if overwrite and self.is_run():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / CONFIG_FILE, save_config(cfg))
        atomic_write_json(self.path / "partition.json", partition_table)
        write_jsonl(self.path / METRICS_FILE, [])
        self._write_run_file(uuid.uuid4().hex, [1])

    def _write_run_file(self, run_id: str, attempts: list[int]) -> None:
        atomic_write_json(self.path / RUN_FILE, {"run_id": run_id, "attempts": attempts})

    def _read_run_file(self) -> tuple[str, list[int]] | None:
        """run.json's id and attempts; None for a run from before it existed.

        Raises:
            ConfigError: a run.json that is not an id of 32 hex digits and a list of rounds.
        """
        path = self.path / RUN_FILE
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            run_id, attempts = record["run_id"], [int(a) for a in record["attempts"]]
            Stamp.checked(run_id, attempts, max(attempts, default=0))
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(
                f"resume: {path} is not a run's id and attempts ({err}); "
                "pass overwrite=true without resume=true to start over"
            ) from None
        return run_id, attempts

    def attempt(self, first_round: int, resumed: bool) -> Stamp:
        """This attempt's stamp at its first round; a resumed run appends that round to
        run.json's attempts first (a run from before run.json gets one now)."""
        known = self._read_run_file()
        run_id, attempts = known if known is not None else (uuid.uuid4().hex, [1])
        if resumed:
            attempts.append(first_round)
        if resumed or known is None:
            self._write_run_file(run_id, attempts)
        return Stamp(run_id, tuple(attempts), first_round)

    def check_resumable(self, cfg: Config) -> None:
        """Fail unless this is a run whose training-relevant settings match ``cfg``."""
        if not self.is_run():
            raise ConfigError(
                f"resume: {self.path} is not a fedit run (no {CONFIG_FILE}); "
                "point output_dir at an existing run or drop resume=true"
            )
        self.check_writable()
        try:
            saved = yaml.safe_load((self.path / CONFIG_FILE).read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            reason = str(err).splitlines()[0]
            raise ConfigError(
                f"resume: {self.path / CONFIG_FILE} is not valid YAML ({reason})"
            ) from None
        changed = {k: v for k, v in changed_settings(saved, cfg).items() if not _may_differ(k)}
        if changed:
            details = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in list(changed.items())[:4])
            raise ConfigError(f"resume: settings differ from the saved run: {details}")
        self._check_readable()

    def _check_readable(self) -> None:
        """Read what ``resume_point`` will read, so a damaged file fails before anything loads."""
        metrics_path = self.path / METRICS_FILE
        if metrics_path.is_file():
            read_metrics(metrics_path)
        last = self._last_complete_round()
        problem = _checkpoint_problem(self.round_dir(last)) if last else None
        if problem:
            earlier = f"resume after round {last - 1}" if last > 1 else "start again from round 1"
            raise ConfigError(
                f"resume: {problem}; delete {self.round_dir(last)} to {earlier}, "
                "or pass overwrite=true without resume=true to start over"
            )
        self._check_client_state(last + 1)

    def _check_client_state(self, next_round: int) -> None:
        """Each client's file that the replay will read (its newest committed version, once
        the new attempt starts at ``next_round``) is whole."""
        known = self._read_run_file()
        if known is None:
            return  # a run from before client state: it has none
        run_id, attempts = known
        stamp = Stamp(run_id, (*attempts, next_round), next_round)
        store = ClientStateStore.for_run(self.path)
        for client_id in store.clients():
            path = store.newest(client_id, stamp)
            problem = safetensors_problem(path) if path is not None else None
            if problem:
                raise ConfigError(
                    f"resume: client state {path} is damaged ({problem}); "
                    "pass overwrite=true without resume=true to start over"
                )

    def _last_complete_round(self) -> int:
        complete = sorted(
            int(d.name.split("_")[1])
            for d in self.checkpoints.glob("round_*")
            if (d / ROUND_MARKER).is_file()
        )
        return complete[-1] if complete else 0

    def resume_point(self) -> ResumePoint:
        """The last complete round, its adapter, and the metrics up to it."""
        last = self._last_complete_round()
        metrics_path = self.path / METRICS_FILE
        history = read_metrics(metrics_path) if metrics_path.is_file() else []
        history = [r for r in history if r["round"] <= last]
        if last == 0:
            return ResumePoint(1, None, history, {})
        strategy_file = self.round_dir(last) / STRATEGY_FILE
        strategy_state = load(strategy_file.read_bytes()) if strategy_file.is_file() else {}
        log.info("resuming %s after round %d", self.path, last)
        return ResumePoint(last + 1, self.round_dir(last), history, strategy_state)

    def saved_strategy_keys(self) -> list[str]:
        """The tensor names in the last complete round's ``strategy.safetensors`` (read from
        its header only), so a strategy can refuse a checkpoint before anything loads."""
        last = self._last_complete_round()
        path = self.round_dir(last) / STRATEGY_FILE
        if not last or not path.is_file():
            return []
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        write_jsonl(self.path / METRICS_FILE, history)

    def complete_round(self, server_round: int, strategy_state: dict[str, Tensor]) -> None:
        """Save the strategy's tensors, then mark the round complete (resume trusts marks only)."""
        folder = self.round_dir(server_round)
        if strategy_state:
            tensors = {key: value.contiguous() for key, value in strategy_state.items()}
            atomic_write_bytes(folder / STRATEGY_FILE, save(tensors))
        marker = {"round": server_round, "strategy_tensors": len(strategy_state)}
        atomic_write_json(folder / ROUND_MARKER, marker)
