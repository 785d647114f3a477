"""What a client keeps between rounds, kept by the client: one versioned file per round trained.

Layout under the store's root (the run folder in-process and in Flower simulation,
``STATE_DIR/<run id>`` at a deployed site)::

    ROOT/clients/<id>/state-a<attempt:03d>-r<round:04d>.safetensors

A ``ClientState`` is one flat dict of tensors with a namespace per thing kept
(``scaffold/control/<key>``: SCAFFOLD's c_i; ``ditto/personal/<key>``: Ditto's v_k), written
whole and atomically by ``save``. In a round, ``KeptState`` loads it once, lets each method
replace its own namespace and saves it once, so that methods that combine (ditto × scaffold)
share one file.

Which file does a client read? Its newest **committed** version (``committed``). A run that
crashed between a client's ``save`` and the round's completion marker leaves a file from a
round that never completed; the replay overwrites it only if it selects that client again,
which under DP's secret selection it need not. So every instruction carries a stamp
(``Stamp``: the run, the first round of each attempt, the round), and a version counts only if
its round was complete before the next attempt began, or is earlier than the current round of
the current attempt. The rule reads nothing but the stamp, so a site that never sees the
server's markers applies it as well (docs/design/personalization.md, section 2).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load, save
from torch import Tensor

from fedit.config import Config
from fedit.io import atomic_write_bytes
from fedit.types import AdapterState, FitConfig, FitInstruction, prefixed, unprefixed

ClientState = dict[str, Tensor]
CLIENTS_FOLDER = "clients"
# Each client's own model (personalization), a PEFT folder: ROOT/personal/client-<id>/
PERSONAL_FOLDER = "personal"
PERSONAL_PREFIX = "client-"
# The namespace of SCAFFOLD's client control variate c_i in a ClientState.
SCAFFOLD_CONTROL = "scaffold/control"
# The namespace of Ditto's personal adapter v_k in a ClientState (client.ditto).
DITTO_PERSONAL = "ditto/personal"
# A deployed site's default STATE_DIR, under $FEDIT_CACHE; node config state-dir=DIR overrides.
SITE_STATE = "site-state"
_FILE = re.compile(r"state-a(\d{3,})-r(\d{4,})\.safetensors")
_RUN_ID = re.compile(r"[0-9a-f]{32}")


class StampError(ValueError):
    """An instruction whose stamp cannot version client state; the message names the field."""


def committed(version: tuple[int, int], attempts: Sequence[int], server_round: int) -> bool:
    """Whether the state a client saved in ``(attempt, round)`` belongs to a completed round.

    Args:
        version: The attempt (1-based) and round the file was written in.
        attempts: The first round of each attempt, the current one last (``[1, 5]``: started at
            round 1, resumed at round 5).
        server_round: The current attempt's round.

    A finished attempt's round counts if the next attempt started after it (attempt k is
    followed by ``attempts[k]``); the current attempt's, if it is before ``server_round``.
    """
    attempt, saved_round = version
    if 1 <= attempt < len(attempts):
        return saved_round < attempts[attempt]
    return attempt == len(attempts) and saved_round < server_round


@dataclass(frozen=True)
class Stamp:
    """The run, its attempts and the round of one instruction: what the store versions by."""

    run_id: str
    attempts: tuple[int, ...]
    server_round: int

    @property
    def attempt(self) -> int:
        """The current attempt, 1-based."""
        return len(self.attempts)

    def stamped(self, config: FitConfig) -> FitConfig:
        """``config`` carrying this stamp (the round loop stamps every instruction)."""
        attempts = ",".join(str(first) for first in self.attempts)
        return dataclasses.replace(
            config,
            server_round=self.server_round,
            state_run=self.run_id,
            state_attempts=attempts,
        )

    @classmethod
    def of(cls, config: FitConfig) -> Stamp:
        """The stamp an instruction carries, checked (``checked``).

        Raises:
            StampError: as for ``checked``, or attempts that are not a list of numbers.
        """
        _check_run_id(config.state_run)  # first: an unstamped instruction says so
        try:
            attempts = tuple(int(first) for first in config.state_attempts.split(","))
        except ValueError:
            raise StampError(
                f"state_attempts {config.state_attempts!r} is not a list of rounds"
            ) from None
        return cls.checked(config.state_run, attempts, config.server_round)

    @classmethod
    def checked(cls, run_id: str, attempts: Sequence[int], server_round: int) -> Stamp:
        """A stamp whose run id may name a folder: at a site the stamp is untrusted input.

        Raises:
            StampError: a run id that is not 32 hex digits (none: the instruction is not
                stamped), or attempts that are not rising rounds from 1 up to the round.
        """
        _check_run_id(run_id)
        rising = all(a <= b for a, b in zip(attempts, attempts[1:], strict=False))
        if not (attempts and rising and attempts[0] >= 1 and attempts[-1] <= server_round):
            raise StampError(
                f"state_attempts {list(attempts)} are not rising rounds from 1 to "
                f"server_round={server_round}"
            )
        return cls(run_id, tuple(attempts), server_round)


def _check_run_id(run_id: str) -> None:
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise StampError(f"state_run {run_id!r} is not 32 hex digits")


def keeps_client_state(cfg: Config) -> bool:
    """Whether the run's clients keep state between rounds (SCAFFOLD's c_i, a personal
    adapter or model), so that its instructions carry a ``Stamp``."""
    return cfg.strategy.name == "scaffold" or cfg.personalization.enabled


def stamp_instructions(instructions: list[FitInstruction], stamp: Stamp) -> list[FitInstruction]:
    """Every instruction with ``stamp`` in its config."""
    return [dataclasses.replace(i, config=stamp.stamped(i.config)) for i in instructions]


def file_name(attempt: int, server_round: int) -> str:
    """The file of the state saved in ``server_round`` of ``attempt``."""
    return f"state-a{attempt:03d}-r{server_round:04d}.safetensors"


class ClientStateStore:
    """Every client's versioned state under one root (see the module docstring)."""

    def __init__(self, root: str | Path, private: bool = False):
        self.root = Path(root)
        self.private = private  # owner-only folders and files (a site's own data)

    @classmethod
    def for_run(cls, output_dir: str | Path) -> ClientStateStore:
        """The store of an in-process or Flower-simulation run: inside its run folder."""
        return cls(output_dir)

    @classmethod
    def for_site(cls, state_dir: str | Path, run_id: str) -> ClientStateStore:
        """A deployed site's store: ``state_dir/<run id>``, owner-only, kept across restarts.

        Raises:
            StampError: a run id that is not 32 hex digits (it would name another folder).
        """
        _check_run_id(run_id)
        return cls(Path(state_dir) / run_id, private=True)

    def folder(self, client_id: int) -> Path:
        return self.root / CLIENTS_FOLDER / str(client_id)

    def versions(self, client_id: int) -> dict[tuple[int, int], Path]:
        """Every saved version of the client: (attempt, round) -> file."""
        found = {}
        folder = self.folder(client_id)
        for path in folder.iterdir() if folder.is_dir() else ():
            match = _FILE.fullmatch(path.name)
            if match:
                found[int(match[1]), int(match[2])] = path
        return found

    def newest(self, client_id: int, stamp: Stamp) -> Path | None:
        """The file ``load`` reads: the newest committed version (by round), or None."""
        versions = self.versions(client_id)
        good = [v for v in versions if committed(v, stamp.attempts, stamp.server_round)]
        return versions[max(good, key=lambda v: (v[1], v[0]))] if good else None

    def load(self, client_id: int, stamp: Stamp) -> ClientState:
        """The client's newest committed state, or {} for a client that never trained."""
        path = self.newest(client_id, stamp)
        return load(path.read_bytes()) if path is not None else {}

    def save(self, client_id: int, stamp: Stamp, state: ClientState) -> Path:
        """Write the state of ``stamp``'s round, then drop every version ``load`` can never
        return again: all but this one and the newest committed (at most two remain).

        Returns:
            The file written.
        """
        keep = self.newest(client_id, stamp)
        path = self.folder(client_id) / file_name(stamp.attempt, stamp.server_round)
        metadata = _metadata(stamp, client_id)
        tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()}
        if self.private:
            for folder in (self.root.parent, self.root, self.root / CLIENTS_FOLDER, path.parent):
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_bytes(path, save(tensors, metadata=metadata), private=self.private)
        for other in self.versions(client_id).values():
            if other not in (path, keep):
                other.unlink(missing_ok=True)
        return path

    def personal_folder(self, client_id: int) -> Path:
        """Where the client publishes its own model (``fedit serve --run`` reads it)."""
        return self.root / PERSONAL_FOLDER / f"{PERSONAL_PREFIX}{client_id}"

    def publish(self, client_id: int, model: Any, adapter: AdapterState) -> Path:
        """Write the client's own model as a PEFT folder, atomically (owner-only at a site)."""
        from fedit.model.lora import save_adapter

        folder = self.personal_folder(client_id)
        if self.private:
            for parent in (self.root.parent, self.root, folder.parent):
                parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return save_adapter(model, adapter, folder, private=self.private)

    def clients(self) -> list[int]:
        """The clients that have a folder in the store."""
        folder = self.root / CLIENTS_FOLDER
        names = (p.name for p in folder.iterdir()) if folder.is_dir() else ()
        return sorted(int(name) for name in names if name.isdigit())


def _metadata(stamp: Stamp, client_id: int) -> dict[str, str]:
    return {
        "run_id": stamp.run_id,
        "attempt": str(stamp.attempt),
        "round": str(stamp.server_round),
        "client": str(client_id),
    }


@dataclass
class KeptState:
    """One client's state in one round: loaded once, each method's namespace replaced by its
    new value, saved once (before the reply is privatised or forged)."""

    store: ClientStateStore
    client_id: int
    stamp: Stamp
    state: ClientState  # all the client keeps; namespaces nobody replaced are saved as they were

    @classmethod
    def open(
        cls, instruction: FitInstruction, store: ClientStateStore | None, method: str
    ) -> KeptState:
        """The newest committed state of the instruction's client ({} if it never trained).

        Raises:
            ValueError: no store (an engine must give ``method``'s clients one).
            StampError: the instruction carries no valid stamp.
        """
        if store is None:
            raise ValueError(f"client {instruction.client_id}: {method} needs a state store")
        stamp = Stamp.of(instruction.config)
        kept = store.load(instruction.client_id, stamp)
        return cls(store, instruction.client_id, stamp, kept)

    def get(self, namespace: str) -> AdapterState:
        """The tensors under ``namespace``, unprefixed ({} if the client keeps none)."""
        return unprefixed(namespace, self.state)

    def put(self, namespace: str, values: AdapterState) -> None:
        """Replace everything under ``namespace`` by ``values``; other namespaces stay."""
        others = {k: v for k, v in self.state.items() if not k.startswith(f"{namespace}/")}
        self.state = others | prefixed(namespace, values)

    def save(self) -> Path:
        """Write the round's state (``ClientStateStore.save``)."""
        return self.store.save(self.client_id, self.stamp, self.state)
