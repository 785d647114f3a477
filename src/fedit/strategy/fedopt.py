"""FedAdam, FedYogi and FedAdagrad: adaptive server optimisers on the pseudo-gradient."""

from __future__ import annotations

from fedit.config import Config
from fedit.strategy.aggregate import adaptive_step, pseudo_gradient, validate_updates
from fedit.strategy.base import StrategyState
from fedit.strategy.fedavg import FedAvg
from fedit.types import AdapterState, ClientUpdate, prefixed, unprefixed

DEFAULT_SERVER_LR = 1e-2


class FedOpt(FedAvg):
    """Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2.

    The server treats Δ = avg_k(w_k) − w as a gradient and applies Adam, Yogi or Adagrad with
    ``η = strategy.server_lr`` (default 1e-2), ``β1 = strategy.beta1`` (0.9),
    ``β2 = strategy.beta2`` (0.99) and ``τ = strategy.tau`` (1e-3), the paper's names and
    defaults. Subclasses only name the optimiser.
    """

    kind = "adam"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.m: AdapterState = {}
        self.v: AdapterState = {}

    def aggregate_fit(
        self, server_round: int, global_state: AdapterState, updates: list[ClientUpdate]
    ) -> tuple[AdapterState, dict[str, float]]:
        validate_updates(global_state, updates)
        delta = pseudo_gradient(global_state, self.average(updates))
        options = self.cfg.strategy
        state, self.m, self.v = adaptive_step(
            self.kind,
            global_state,
            delta,
            self.m,
            self.v,
            options.server_lr or DEFAULT_SERVER_LR,
            options.beta1,
            options.beta2,
            options.tau,
        )
        return state, {}

    def state_dict(self) -> StrategyState:
        return {**prefixed("m", self.m), **prefixed("v", self.v)}

    def load_state_dict(self, state: StrategyState) -> None:
        self.m, self.v = unprefixed("m", state), unprefixed("v", state)


class FedAdam(FedOpt):
    """Adam on the server: ``v ← β2 v + (1 − β2) Δ²``."""

    kind = "adam"


class FedYogi(FedOpt):
    """Yogi on the server: ``v ← v − (1 − β2) Δ² sign(v − Δ²)``."""

    kind = "yogi"


class FedAdagrad(FedOpt):
    """Adagrad on the server: ``v ← v + Δ²``."""

    kind = "adagrad"
