"""FedAvg: the example-weighted mean of the client adapters, as in FedIT/Shepherd."""

from __future__ import annotations

from fedit.strategy.aggregate import validate_updates, weighted_average
from fedit.strategy.base import Strategy
from fedit.types import AdapterState, ClientUpdate


class FedAvg(Strategy):
    """McMahan et al. 2017. Each LoRA tensor is averaged with weights n_k / Σ n.

    Averaging A and B separately is what FedIT and Shepherd do; it is not the average of the
    products B·A (see ``Exact`` for that).
    """

    def aggregate_fit(
        self, server_round: int, global_state: AdapterState, updates: list[ClientUpdate]
    ) -> tuple[AdapterState, dict[str, float]]:
        validate_updates(global_state, updates)
        return self.average(updates), {}

    @staticmethod
    def average(updates: list[ClientUpdate]) -> AdapterState:
        """The example-weighted mean of the updates' adapters."""
        return weighted_average([u.state for u in updates], [u.num_examples for u in updates])
