"""FedAvgM: FedAvg with server momentum on the pseudo-gradient."""

from __future__ import annotations

from fedit.config import Config
from fedit.strategy.aggregate import momentum_step, pseudo_gradient, validate_updates
from fedit.strategy.base import StrategyState
from fedit.strategy.fedavg import FedAvg
from fedit.types import AdapterState, ClientUpdate, prefixed, unprefixed

DEFAULT_SERVER_LR = 1.0


class FedAvgM(FedAvg):
    """Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution".

    With the pseudo-gradient Δ = avg_k(w_k) − w: ``v ← β v + Δ`` and ``w ← w + η v``, where
    ``β = strategy.server_momentum`` (default 0.9) and ``η = strategy.server_lr`` (default 1.0).
    With β = 0 and η = 1 this is FedAvg.
    """

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.momentum: AdapterState = {}

    def aggregate_fit(
        self, server_round: int, global_state: AdapterState, updates: list[ClientUpdate]
    ) -> tuple[AdapterState, dict[str, float]]:
        validate_updates(global_state, updates)
        delta = pseudo_gradient(global_state, self.average(updates))
        server_lr = self.cfg.strategy.server_lr or DEFAULT_SERVER_LR
        state, self.momentum = momentum_step(
            global_state, delta, self.momentum, server_lr, self.cfg.strategy.server_momentum
        )
        return state, {}

    def state_dict(self) -> StrategyState:
        return prefixed("momentum", self.momentum)

    def load_state_dict(self, state: StrategyState) -> None:
        self.momentum = unprefixed("momentum", state)
