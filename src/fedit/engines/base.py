"""What the round loop needs from an engine: train some clients, evaluate, save an adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from fedit.types import AdapterState, ClientUpdate, FitInstruction


class Engine(Protocol):
    """Moves adapters to clients and back. The in-process simulation is one engine."""

    num_clients: int

    @property
    def client_sizes(self) -> list[int]:
        """Training examples per client (weighted selection and SCAFFOLD's N use it)."""
        ...

    def initial_state(self) -> AdapterState:
        """The freshly initialised global adapter (seeded)."""
        ...

    def fit(self, instructions: list[FitInstruction], server_round: int) -> list[ClientUpdate]:
        """Deliver each instruction, let its client train, and return the replies.

        Each reply's ``metrics`` includes ``bytes_down`` and ``bytes_up``: the serialised sizes
        of what was sent to and received from that client.
        """
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
