"""What the round loop needs from an engine: train some clients, evaluate, save an adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from fedit.types import AdapterState, ClientUpdate


class Engine(Protocol):
    """Moves adapters to clients and back. The in-process simulation is one engine."""

    num_clients: int

    def initial_state(self) -> AdapterState:
        """The freshly initialised global adapter (seeded)."""
        ...

    def fit(
        self, client_ids: list[int], global_state: AdapterState, server_round: int, lr: float
    ) -> list[ClientUpdate]:
        """Train each client from ``global_state``; return their updates."""
        ...

    def evaluate(self, state: AdapterState | None) -> dict[str, Any]:
        """Score an adapter (or the bare base model when ``state`` is None) on the test set."""
        ...

    def save_adapter(self, state: AdapterState, path: Path) -> None:
        """Write ``state`` as a PEFT adapter folder."""
        ...

    def load_adapter(self, path: Path) -> AdapterState:
        """Read an adapter folder written by ``save_adapter``."""
        ...
