"""What the round loop needs: a transport that reaches the clients, and the server's model.

An engine is only a ``Transport``: it moves each round's instructions to the clients and their
replies back (in-process, or through Flower's SuperLink). Everything the server does with its
own copy of the model (the initial adapter, evaluation, adapter files) is a ``ServerModel``,
the same in-process object whichever transport trains the clients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from fedit.types import AdapterState, ClientUpdate, FitInstruction


class Transport(Protocol):
    """Moves adapters to clients and back."""

    @property
    def client_sizes(self) -> list[int]:
        """Training examples per client (weighted selection and SCAFFOLD's N use it)."""
        ...

    def fit(self, instructions: list[FitInstruction], server_round: int) -> list[ClientUpdate]:
        """Deliver each instruction, let its client train, and return the valid replies.

        A client that fails, does not answer in time, or replies with a malformed update is
        logged and left out; the round loop decides whether enough replied. Each reply's
        ``metrics`` includes ``bytes_down`` and ``bytes_up``: the sizes of the
        ``engines.messages`` bytes sent to and received from that client.
        """
        ...


class ServerModel(Protocol):
    """The server's own model: the initial adapter, evaluation, adapter files."""

    def initial_state(self) -> AdapterState:
        """The freshly initialised global adapter (seeded)."""
        ...

    def evaluate(self, state: AdapterState | None, generate: bool = True) -> dict[str, Any]:
        """Score an adapter (or the bare base model when ``state`` is None) on the test set;
        ``generate=False`` skips greedy generation (loss only, ``eval.generate_every``)."""
        ...

    def save_adapter(self, state: AdapterState, path: Path) -> None:
        """Write ``state`` as a PEFT adapter folder."""
        ...

    def load_adapter(self, path: Path) -> AdapterState:
        """Read an adapter folder written by ``save_adapter``."""
        ...
