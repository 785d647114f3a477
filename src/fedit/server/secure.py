"""The round loop's side of secure aggregation: one sum in, one reply for the strategy out.

Under ``privacy.secure_aggregation`` the transport's ``fit_secure`` returns a ``SecureSum``
(``engines/flower_secagg.py``): Σ w_i·Δ_i, Σ w_i and who is in the sum, nothing per client.
Without DP the strategy gets the weighted mean as one reply, exactly as the DP path hands it
the private mean (``PrivacyRun.secure_input``); a strategy that is a function of the mean
(FedAvg and its server optimisers) then aggregates as it would in the clear.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from fedit.config import Config
from fedit.config.secagg import MIN_CLIENTS
from fedit.types import AdapterState, ClientUpdate, FitInstruction, SecureSum


@runtime_checkable
class SecureTransport(Protocol):
    """A transport that can run a secure-aggregation round."""

    def fit_secure(self, instructions: list[FitInstruction], server_round: int) -> SecureSum:
        """Train the instructed clients and return only the sum of their updates."""
        ...


def too_few_to_hide(instructions: list[FitInstruction]) -> bool:
    """A round drew fewer clients than secure aggregation needs (Poisson draws vary)."""
    return 0 < len(instructions) < MIN_CLIENTS


def fit_secure(
    cfg: Config, transport: object, instructions: list[FitInstruction], server_round: int
) -> SecureSum:
    """The transport's secure round (config validation keeps other engines out).

    A round without instructions trains no one and sums nothing; the caller leaves out a
    draw of fewer than ``MIN_CLIENTS`` (``too_few_to_hide``), whose sum would not hide an
    update from the others.
    """
    if not instructions:
        return SecureSum([], {}, 0.0, 0.0, {"bytes_down": 0, "bytes_up": 0})
    if not isinstance(transport, SecureTransport):
        raise TypeError(f"engine={cfg.engine}: its transport cannot run secure aggregation")
    return transport.fit_secure(instructions, server_round)


def weighted_mean(global_state: AdapterState, secure: SecureSum) -> ClientUpdate:
    """x + Σ w_i·Δ_i / Σ w_i, as the one reply the strategy aggregates."""
    mean = {n: t.detach().float().cpu().clone() for n, t in global_state.items()}
    for name, total in secure.delta_sum.items():
        mean[name] += total.float() / secure.weight_sum
    return ClientUpdate(-1, mean, num_examples=1, train_loss=0.0, num_steps=0)


def public_metrics(secure: SecureSum, private: bool) -> dict[str, Any]:
    """The round's ``aggregation.secure_aggregation`` record.

    Always the quantization (bits, range, step). Without DP also who is in the sum, how many
    dropped after key sharing, the bound on the mean's quantization error per coordinate
    against the mean update's largest coordinate, and the coordinates the range clipped.
    Under DP the count-dependent fields go, as the reply count does (``public_record``).
    """
    metrics = secure.metrics
    if not secure.clients:
        return {"clients": []} if not private else {}
    record = {k: metrics[k] for k in ("bits", "clipping_range", "quantization_step")}
    if private:
        return record
    largest = max((float(t.abs().max()) for t in secure.delta_sum.values()), default=0.0)
    weight = max(secure.weight_sum, 1e-12)
    record |= {
        "clients": secure.clients,
        "dropped_after_key_sharing": metrics["dropped_after_key_sharing"],
        "error_bound": metrics["error_bound"] / weight,
        "update_scale": largest / weight,
        "clipped_coordinates": metrics.get("clipped_coordinates", 0),
    }
    return record
