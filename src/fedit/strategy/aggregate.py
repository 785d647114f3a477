"""Pure aggregation math on adapter states, keyed by parameter name."""

from __future__ import annotations

import torch

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


def weighted_average(states: list[AdapterState], weights: list[float]) -> AdapterState:
    """Σ_k w_k · state_k / Σ_k w_k for every parameter name (FedAvg, McMahan et al. 2017).

    Args:
        states: adapter states with identical keys and shapes.
        weights: non-negative weights, e.g. example counts; they need not sum to one.

    Returns:
        A new state in fp32 on CPU.
    """
    if len(states) != len(weights) or not states:
        raise ValueError("states and weights must be non-empty and of equal length")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    averaged: AdapterState = {}
    for name in states[0]:
        stacked = torch.stack([s[name].detach().float().cpu() for s in states])  # (K, *shape)
        coeffs = torch.tensor(weights, dtype=torch.float32) / total  # (K,)
        averaged[name] = torch.tensordot(coeffs, stacked, dims=1)
    return averaged
