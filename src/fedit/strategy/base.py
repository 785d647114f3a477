"""The Strategy interface: how clients are picked and how their adapters are combined."""

from __future__ import annotations

from abc import ABC, abstractmethod

from fedit.server.sampling import select_clients
from fedit.types import AdapterState, ClientUpdate


class Strategy(ABC):
    """A federated strategy in two phases, after Flower's ``configure_train``/``aggregate_train``.

    Subclasses override ``aggregate_fit`` (and optionally ``configure_fit``); the round loop only
    calls these methods, so new strategies plug in without touching it.
    """

    def __init__(self, fraction_fit: float, min_fit_clients: int, seed: int):
        self.fraction_fit = fraction_fit
        self.min_fit_clients = min_fit_clients
        self.seed = seed

    def configure_fit(self, server_round: int, num_clients: int) -> list[int]:
        """Pick the clients that train in ``server_round`` (seeded per round)."""
        return select_clients(
            num_clients, self.fraction_fit, self.min_fit_clients, self.seed, server_round
        )

    @abstractmethod
    def aggregate_fit(
        self, server_round: int, global_state: AdapterState, updates: list[ClientUpdate]
    ) -> AdapterState:
        """Combine the clients' adapters into the next global adapter."""

    def state_dict(self) -> dict[str, object]:
        """Server-side strategy state to checkpoint (stateless strategies return {})."""
        return {}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore what ``state_dict`` returned."""
        del state  # stateless by default
