"""SCAFFOLD: control variates correct each client's drift towards its own data."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

import torch

from fedit.config import Config, ConfigError
from fedit.strategy.aggregate import (
    AggregationError,
    scaffold_server_step,
    validate_updates,
    weighted_average,
)
from fedit.strategy.base import StrategyState
from fedit.strategy.fedavg import FedAvg
from fedit.types import CONTROL_DELTA, AdapterState, ClientUpdate, FitConfig, prefixed, unprefixed

DEFAULT_SERVER_LR = 1.0
# A checkpoint from before issue 33 holds every c_i under this prefix.
SERVER_KEPT_CONTROLS = "client_control/"
OLD_RUN = (
    "resume: this SCAFFOLD run keeps c_i on the server (fedit before issue 33); "
    "start it again with overwrite=true"
)


class Scaffold(FedAvg):
    """Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging", option II.

    The server keeps the control variate c and sends it with the adapter; each client keeps
    its own c_i in its state store (``client.state``: the run folder in simulation, the site's
    state folder when deployed), so only two adapters travel down and a checkpoint holds one
    variate, not N + 1. A client corrects every gradient by ``c − c_i``, replies with its
    adapter and ``Δc_i = (x − y_i) / (Σ_t η_t) − c`` (option II; Σ_t η_t is the sum of its
    step sizes) and sets c_i ← c_i + Δc_i itself, as the paper's Algorithm 1 does: c_i advances
    whenever the client trains, even if its reply is dropped or late. The server then applies
    ``x ← x + η_g · mean_k(Δy_k)`` and ``c ← c + |S|/N · mean_k(Δc_k)``, with
    ``η_g = strategy.server_lr`` (default 1.0) and plain means over the round's clients.
    """

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.control: AdapterState = {}

    def fit_config(self, server_round: int, client_id: int, lr: float) -> FitConfig:
        return dataclasses.replace(super().fit_config(server_round, client_id, lr), scaffold=True)

    def client_extras(self, client_id: int, global_state: AdapterState) -> dict[str, AdapterState]:
        del client_id  # every client gets the same c; c_i is the client's own
        zeros = {name: torch.zeros_like(t) for name, t in global_state.items()}
        return {"server_control": self.control or zeros}

    def aggregate_fit(
        self, server_round: int, global_state: AdapterState, updates: list[ClientUpdate]
    ) -> tuple[AdapterState, dict[str, float]]:
        validate_updates(global_state, updates)
        for update in updates:
            delta = update.extras.get(CONTROL_DELTA)
            if delta is None or set(delta) != set(global_state):
                raise AggregationError(
                    f"client {update.client_id}: missing or partial control_delta"
                )
        uniform = [1.0] * len(updates)
        mean_y = weighted_average([u.state for u in updates], uniform)
        mean_delta_y = {name: mean_y[name] - global_state[name] for name in global_state}
        mean_delta_c = weighted_average([u.extras[CONTROL_DELTA] for u in updates], uniform)
        control = self.control or {name: torch.zeros_like(t) for name, t in global_state.items()}
        state, self.control = scaffold_server_step(
            global_state,
            mean_delta_y,
            control,
            mean_delta_c,
            self.cfg.strategy.server_lr or DEFAULT_SERVER_LR,
            len(updates),
            self.num_clients,
        )
        return state, {}

    def state_dict(self) -> StrategyState:
        return prefixed("control", self.control)

    def check_saved(self, keys: Collection[str]) -> None:
        """Refuse a checkpoint from before issue 33, whose c_i the clients do not have."""
        if any(key.startswith(SERVER_KEPT_CONTROLS) for key in keys):
            raise ConfigError(OLD_RUN)

    def load_state_dict(self, state: StrategyState) -> None:
        self.check_saved(state)
        self.control = unprefixed("control", state)
