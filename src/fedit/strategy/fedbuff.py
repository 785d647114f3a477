"""FedBuff: asynchronous buffered aggregation (Nguyen et al., AISTATS 2022).

Clients train concurrently, each from the global version current when it started. The server
keeps a buffer; every K arriving updates (``strategy.buffer_size``) it steps::

    Δ_i  = y_i − x_{v_i}                        client i's change from the version it started at
    τ_i  = v − v_i                              staleness: global versions since it started
    x   ← x + η · Σ_{i in buffer} s(τ_i) · Δ_i / K

with ``s(τ) = 1/sqrt(1+τ)`` (``strategy.staleness=sqrt``, the paper's) and η
``strategy.server_lr`` (default 1). The sum is divided by K, not by Σ s(τ_i): this is the
paper's Algorithm 1 (Δ̄ ← Δ̄/K, then x ← x − η_g Δ̄, with its Δ = x_start − y, so the sign
here is +). With η = 1, every τ = 0 and the K clients' sizes equal, one step is FedAvg.

The event loop that decides who starts when, and from which version, is the server's
(``server.async_loop``); this module holds the math and builds each client's instruction.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from fedit.strategy.aggregate import pseudo_gradient, validate_updates
from fedit.strategy.fedavg import FedAvg
from fedit.types import AdapterState, ClientUpdate, FitInstruction

DEFAULT_SERVER_LR = 1.0

# s(τ) for an update τ global versions old (config.asynchronous.STALENESS lists the names).
STALENESS_WEIGHTS: dict[str, Callable[[int], float]] = {
    "sqrt": lambda staleness: 1.0 / math.sqrt(1.0 + staleness),
    "inverse": lambda staleness: 1.0 / (1.0 + staleness),
    "constant": lambda staleness: 1.0,
}


def staleness_weight(staleness: int, kind: str = "sqrt") -> float:
    """s(τ): how much an update τ >= 0 global versions old counts."""
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    return STALENESS_WEIGHTS[kind](staleness)


def buffered_step(
    global_state: AdapterState,
    deltas: list[AdapterState],
    weights: list[float],
    server_lr: float,
) -> AdapterState:
    """x + η · Σ_i w_i · Δ_i / K, K = len(deltas) (the buffer is full when this is called)."""
    if not deltas or len(deltas) != len(weights):
        raise ValueError(f"{len(deltas)} deltas and {len(weights)} weights; need K >= 1 of each")
    scale = server_lr / len(deltas)
    result = {}
    for name, x in global_state.items():
        start = x.detach().to(device="cpu", dtype=torch.float32)  # (r, d_in) or (d_out, r)
        step = torch.zeros_like(start)
        for delta, weight in zip(deltas, weights, strict=True):  # buffer order: reproducible
            step += weight * delta[name]
        result[name] = start + scale * step
    return result


class FedBuff(FedAvg):
    """Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation".

    Runs under ``server.async_loop.run_buffered``; ``aggregate_fit`` is the synchronous special
    case (every update fresh, τ = 0), so the class is also a valid synchronous strategy.
    """

    @property
    def server_lr(self) -> float:
        return self.cfg.strategy.server_lr or DEFAULT_SERVER_LR

    def instruct(
        self, version: int, global_state: AdapterState, client_id: int, lr: float
    ) -> FitInstruction:
        """The instruction of a client starting from global ``version``.

        Seeded as synchronous round ``version + 1`` would seed it: a client starts at most once
        per version (``server.async_loop``), so no two of its runs share a seed.
        """
        return FitInstruction(
            client_id=client_id,
            state=self.client_state(version + 1, global_state, client_id),
            config=self.fit_config(version + 1, client_id, lr),
            extras=self.client_extras(client_id, global_state),
        )

    def delta(self, start_state: AdapterState, update: ClientUpdate) -> AdapterState:
        """Check a reply against the adapter it started from, then return its Δ."""
        validate_updates(start_state, [update])
        return pseudo_gradient(start_state, update.state)  # Δ = y − x_start, fp32

    def aggregate_buffer(
        self, global_state: AdapterState, deltas: list[AdapterState], staleness: list[int]
    ) -> tuple[AdapterState, dict[str, float]]:
        """One server step on a full buffer; ``staleness[i]`` is τ of ``deltas[i]``."""
        kind = self.cfg.strategy.staleness
        weights = [staleness_weight(s, kind) for s in staleness]
        state = buffered_step(global_state, deltas, weights, self.server_lr)
        return state, {"mean_staleness_weight": sum(weights) / len(weights)}

    def aggregate_fit(
        self, server_round: int, global_state: AdapterState, updates: list[ClientUpdate]
    ) -> tuple[AdapterState, dict[str, float]]:
        deltas = [self.delta(global_state, update) for update in updates]
        return self.aggregate_buffer(global_state, deltas, [0] * len(deltas))
