"""SCAFFOLD: control variates correct each client's drift towards its own data."""

from __future__ import annotations

import dataclasses

import torch

from fedit.config import Config
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


class Scaffold(FedAvg):
    """Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging", option II.

    The server keeps the control variate c and, so that clients can be stateless processes
    (a Flower ClientApp starts afresh every round), each client's c_i; both travel with the
    adapter. A client corrects every gradient by ``c − c_i`` and replies with its adapter and
    ``Δc_i = (x − y_i) / (Σ_t η_t) − c`` (option II; Σ_t η_t is the sum of its step sizes).
    The server then applies ``x ← x + η_g · mean_k(Δy_k)`` and
    ``c ← c + |S|/N · mean_k(Δc_k)``, with ``η_g = strategy.server_lr`` (default 1.0) and
    plain means over the round's clients, as in the paper.
    """

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.control: AdapterState = {}
        self.client_controls: dict[int, AdapterState] = {}

    def fit_config(self, server_round: int, client_id: int, lr: float) -> FitConfig:
        return dataclasses.replace(super().fit_config(server_round, client_id, lr), scaffold=True)

    def client_extras(self, client_id: int, global_state: AdapterState) -> dict[str, AdapterState]:
        zeros = {name: torch.zeros_like(t) for name, t in global_state.items()}
        return {
            "server_control": self.control or zeros,
            "client_control": self.client_controls.get(client_id, zeros),
        }

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
        for update in updates:
            old = self.client_controls.get(update.client_id)
            delta = update.extras[CONTROL_DELTA]
            self.client_controls[update.client_id] = {
                name: (old[name] if old else 0) + delta[name] for name in delta
            }
        return state, {}

    def state_dict(self) -> StrategyState:
        state = prefixed("control", self.control)
        for client_id, control in self.client_controls.items():
            state.update(prefixed(f"client_control/{client_id}", control))
        return state

    def load_state_dict(self, state: StrategyState) -> None:
        self.control = unprefixed("control", state)
        ids = {int(key.split("/")[1]) for key in state if key.startswith("client_control/")}
        self.client_controls = {i: unprefixed(f"client_control/{i}", state) for i in ids}
