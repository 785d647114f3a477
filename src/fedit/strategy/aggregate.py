"""Pure aggregation math on adapter states, keyed by parameter name."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from fedit.types import AdapterState, ClientUpdate


class AggregationError(ValueError):
    """Client replies that cannot be aggregated."""


class EmptyRoundError(AggregationError):
    """No client update arrived, or every update had zero examples."""


class MismatchedUpdateError(AggregationError):
    """An update's keys or shapes differ from the global adapter's."""


def validate_updates(global_state: AdapterState, updates: list[ClientUpdate]) -> None:
    """Check every reply before any arithmetic: keys, shapes, example counts, finite values."""
    if not updates:
        raise EmptyRoundError("no client updates to aggregate")
    expected = set(global_state)
    for update in updates:
        keys = set(update.state)
        if keys != expected:
            missing = sorted(expected - keys)[:3]
            extra = sorted(keys - expected)[:3]
            raise MismatchedUpdateError(
                f"client {update.client_id}: adapter keys differ (missing {missing}, extra {extra})"
            )
        for name, tensor in update.state.items():
            if tensor.shape != global_state[name].shape:
                raise MismatchedUpdateError(
                    f"client {update.client_id}: {name} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(global_state[name].shape)}"
                )
            if not torch.isfinite(tensor).all():
                raise AggregationError(f"client {update.client_id}: {name} has NaN or Inf")
        if update.num_examples < 0:
            raise AggregationError(f"client {update.client_id}: negative num_examples")
    if sum(u.num_examples for u in updates) == 0:
        raise EmptyRoundError("every client update reported zero examples")


def _fp32(tensor: Tensor) -> Tensor:
    """A detached fp32 CPU view of ``tensor`` (a copy only when dtype or device differ)."""
    return tensor.detach().to(device="cpu", dtype=torch.float32)


def _check_same_keys(reference: AdapterState, other: AdapterState, what: str) -> None:
    if set(reference) != set(other):
        missing = sorted(set(reference) - set(other))[:3]
        extra = sorted(set(other) - set(reference))[:3]
        raise MismatchedUpdateError(f"{what}: keys differ (missing {missing}, extra {extra})")
    for name, tensor in other.items():
        if tensor.shape != reference[name].shape:
            raise MismatchedUpdateError(
                f"{what}: {name} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(reference[name].shape)}"
            )


class WeightedSum:
    """Streams states into a running fp32 Σ_k w_k s_k, so memory holds one state, not K.

    ``add`` each client state as it arrives (it may be dropped right after); ``result`` gives
    Σ_k w_k s_k / Σ_k w_k, the FedAvg mean (McMahan et al. 2017).
    """

    def __init__(self) -> None:
        self._sums: AdapterState = {}
        self._total_weight = 0.0
        self._count = 0

    @property
    def count(self) -> int:
        """How many states were added."""
        return self._count

    @property
    def total_weight(self) -> float:
        """Σ_k w_k so far."""
        return self._total_weight

    def add(self, state: AdapterState, weight: float) -> None:
        """Add ``weight · state`` to the running sum; ``state`` is read, never kept or changed."""
        weight = float(weight)
        if not weight >= 0 or weight == float("inf"):
            raise AggregationError(f"weight must be finite and non-negative, got {weight}")
        if self._count == 0:
            # torch.mul allocates, so the sum never aliases the first client's tensors.
            self._sums = {name: torch.mul(_fp32(t), weight) for name, t in state.items()}
        else:
            _check_same_keys(self._sums, state, f"state {self._count}")
            for name, tensor in state.items():
                self._sums[name].add_(_fp32(tensor), alpha=weight)
        self._total_weight += weight
        self._count += 1

    def result(self) -> AdapterState:
        """Σ_k w_k s_k / Σ_k w_k as new fp32 CPU tensors.

        Raises:
            EmptyRoundError: nothing was added, or the weights sum to zero.
        """
        if self._count == 0:
            raise EmptyRoundError("no states were added to the weighted sum")
        if self._total_weight <= 0:
            raise EmptyRoundError("weights must sum to a positive number")
        return {name: total / self._total_weight for name, total in self._sums.items()}


def weighted_average(states: Iterable[AdapterState], weights: Iterable[float]) -> AdapterState:
    """Σ_k w_k · state_k / Σ_k w_k for every parameter name (FedAvg, McMahan et al. 2017).

    Streams through ``WeightedSum``, so a generator of states is aggregated in the memory of
    one state.

    Args:
        states: adapter states with identical keys and shapes.
        weights: non-negative weights, e.g. example counts; they need not sum to one.

    Returns:
        A new state in fp32 on CPU.
    """
    accumulator = WeightedSum()
    try:
        for state, weight in zip(states, weights, strict=True):
            accumulator.add(state, weight)
    except ValueError as error:
        if isinstance(error, AggregationError):
            raise
        raise ValueError("states and weights must be of equal length") from error
    return accumulator.result()


def _zeros_if_missing(state: AdapterState | None, name: str, like: Tensor) -> Tensor:
    """The optimizer-state entry ``name``, or zeros shaped like ``like`` in its first round."""
    if state is None or name not in state:
        return torch.zeros(like.shape, dtype=torch.float32)
    return _fp32(state[name])


def pseudo_gradient(global_state: AdapterState, averaged: AdapterState) -> AdapterState:
    """Δ = averaged − global, the server's pseudo-gradient (Reddi et al. 2021, Δ_t).

    Its sign follows the paper: Δ points from the global model towards the clients, so the
    server optimizers below step with ``x + η ·`` (not ``x − η ·``).
    """
    _check_same_keys(global_state, averaged, "averaged state")
    return {name: _fp32(averaged[name]) - _fp32(x) for name, x in global_state.items()}


def momentum_step(
    global_state: AdapterState,
    delta: AdapterState,
    momentum: AdapterState | None,
    server_lr: float,
    beta: float,
) -> tuple[AdapterState, AdapterState]:
    """FedAvgM, server momentum on the pseudo-gradient (Hsu et al. 2019).

    v ← β v + Δ;  x ← x + η v. With β = 0 and η = 1 this is FedAvg.

    Args:
        global_state: x, the current global adapter.
        delta: Δ from ``pseudo_gradient``.
        momentum: v from the previous round; None (or a missing key) means zeros.
        server_lr: η, the server learning rate.
        beta: β, the momentum (the paper sweeps it; 0.9 is its common choice).

    Returns:
        (new global state, new momentum), both new fp32 tensors.
    """
    _check_same_keys(global_state, delta, "delta")
    new_state: AdapterState = {}
    new_momentum: AdapterState = {}
    for name, x in global_state.items():
        velocity = beta * _zeros_if_missing(momentum, name, delta[name]) + _fp32(delta[name])
        new_momentum[name] = velocity
        new_state[name] = _fp32(x) + server_lr * velocity
    return new_state, new_momentum


# Second-moment updates of Reddi et al. 2021, Algorithm 2: (v_{t-1}, Δ_t², β2) -> v_t.
_SECOND_MOMENT: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {
    "adagrad": lambda v, d2, beta2: v + d2,
    "yogi": lambda v, d2, beta2: v - (1 - beta2) * d2 * torch.sign(v - d2),
    "adam": lambda v, d2, beta2: beta2 * v + (1 - beta2) * d2,
}
ADAPTIVE_KINDS = tuple(_SECOND_MOMENT)


def adaptive_step(
    kind: str,
    global_state: AdapterState,
    delta: AdapterState,
    m: AdapterState | None,
    v: AdapterState | None,
    eta: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[AdapterState, AdapterState, AdapterState]:
    """FedAdagrad / FedYogi / FedAdam, one server step (Reddi et al. 2021, Algorithm 2).

    m_t = β1 m_{t-1} + (1 − β1) Δ_t, then by ``kind``:
    adagrad v_t = v_{t-1} + Δ_t²;  yogi v_t = v_{t-1} − (1 − β2) Δ_t² sign(v_{t-1} − Δ_t²);
    adam v_t = β2 v_{t-1} + (1 − β2) Δ_t²;  and x_{t+1} = x_t + η m_t / (√v_t + τ).
    There is no bias correction, as in the paper. Initial values: m_{-1} = 0, and
    v_{-1} = τ², the smallest value Algorithm 2 allows (it asks for v_{-1} ≥ τ²). The paper's
    experiments fix β1 = 0.9, β2 = 0.99 and tune η and τ. FedAdagrad ignores β2.

    Args:
        kind: "adam", "yogi" or "adagrad".
        global_state: x_t.
        delta: Δ_t from ``pseudo_gradient``.
        m: m_{t-1}; None (or a missing key) in the first round means zeros.
        v: v_{t-1}; None (or a missing key) in the first round means τ².
        eta: η, the server learning rate.
        beta1: β1, first-moment decay.
        beta2: β2, second-moment decay (adam and yogi).
        tau: τ, the adaptivity; it also bounds the step (|step| ≤ η |m| / τ).

    Returns:
        (x_{t+1}, m_t, v_t) as new fp32 tensors.
    """
    if kind not in _SECOND_MOMENT:
        raise ValueError(f"adaptive kind must be one of {ADAPTIVE_KINDS}, got {kind!r}")
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    _check_same_keys(global_state, delta, "delta")
    update_v = _SECOND_MOMENT[kind]
    new_state: AdapterState = {}
    new_m: AdapterState = {}
    new_v: AdapterState = {}
    for name, x in global_state.items():
        d = _fp32(delta[name])
        previous_v = _fp32(v[name]) if v is not None and name in v else torch.full_like(d, tau**2)
        new_m[name] = beta1 * _zeros_if_missing(m, name, d) + (1 - beta1) * d
        new_v[name] = update_v(previous_v, d * d, beta2)
        new_state[name] = _fp32(x) + eta * new_m[name] / (new_v[name].sqrt() + tau)
    return new_state, new_m, new_v


def scaffold_server_step(
    global_state: AdapterState,
    mean_delta_y: AdapterState,
    control: AdapterState | None,
    mean_delta_c: AdapterState,
    server_lr: float,
    num_selected: int,
    num_clients: int,
) -> tuple[AdapterState, AdapterState]:
    """SCAFFOLD's server update (Karimireddy et al. 2020, eq. 5).

    x ← x + η_g · (1/|S|) Σ_{i∈S} Δy_i;  c ← c + (|S|/N) · (1/|S|) Σ_{i∈S} Δc_i.
    The means are plain (unweighted) over the |S| selected clients, as in the paper.

    Args:
        global_state: x, the server model.
        mean_delta_y: (1/|S|) Σ Δy_i, the mean of y_i − x over the selected clients.
        control: c, the server control variate; None (or a missing key) means zeros.
        mean_delta_c: (1/|S|) Σ Δc_i, the mean of c_i⁺ − c_i.
        server_lr: η_g, the global step size (1 in most of the paper's experiments).
        num_selected: |S|, how many clients contributed.
        num_clients: N, the total number of clients.

    Returns:
        (new x, new c) as new fp32 tensors.
    """
    if not 0 < num_selected <= num_clients:
        raise ValueError(
            f"need 0 < num_selected <= num_clients, got {num_selected} and {num_clients}"
        )
    _check_same_keys(global_state, mean_delta_y, "mean_delta_y")
    _check_same_keys(global_state, mean_delta_c, "mean_delta_c")
    fraction = num_selected / num_clients
    new_state: AdapterState = {}
    new_control: AdapterState = {}
    for name, x in global_state.items():
        new_state[name] = _fp32(x) + server_lr * _fp32(mean_delta_y[name])
        previous_c = _zeros_if_missing(control, name, x)
        new_control[name] = previous_c + fraction * _fp32(mean_delta_c[name])
    return new_state, new_control
