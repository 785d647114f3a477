"""The Gaussian mechanism on LoRA updates: L2 clipping, a client's noise share, the private mean.

An update Δ_i is the change of the LoRA tensors a client trains and sends
(``types.shared_names``), taken as one vector (keys in sorted order): what is clipped and
noised is exactly what leaves the client. DP-FedAvg (McMahan et al. 2018) clips each Δ_i to
norm C, sums, adds N(0, z²C²) per coordinate (at the server, or as N(0, z²C²/D) from each
client, the server adding what missing replies took with them), and divides by a fixed
denominator D (the expected number of clients), so the global step is
x + (Σ clip(Δ_i) + noise) / D. The weights are uniform whatever the data sizes: with
example-weighted means the sensitivity would be C·max w_i, not C/D.
"""

from __future__ import annotations

import math

import torch

from fedit.privacy.randomness import (
    CLIENT_COUNT_NOISE,
    CLIENT_UPDATE_NOISE,
    NoiseSource,
    gaussian_noise,
    gaussian_scalar,
)
from fedit.types import AdapterState, ClientUpdate, FitConfig, shared_names


def update_delta(new: AdapterState, old: AdapterState, names: list[str]) -> AdapterState:
    """Δ = new − old for ``names``, fp32 on CPU."""
    return {n: new[n].detach().float().cpu() - old[n].detach().float().cpu() for n in names}


def global_norm(tensors: AdapterState) -> float:
    """The L2 norm of all tensors taken as one vector."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors.values()))


def clip(delta: AdapterState, clip_norm: float) -> tuple[AdapterState, float]:
    """Δ · min(1, C / ‖Δ‖), and ‖Δ‖ before clipping. Inside C, Δ is returned unchanged."""
    if not clip_norm > 0:
        raise ValueError(f"clip norm must be > 0, got {clip_norm}")
    norm = global_norm(delta)
    if norm <= clip_norm:
        return delta, norm
    scale = clip_norm / norm
    return {n: t * scale for n, t in delta.items()}, norm


def client_noise_std(config: FitConfig) -> float:
    """A client's share of the update noise: z·C/√D (0 when the server adds the noise).

    D (``dp_noise_shares``) is the plan's expected number of clients per round, never the
    round's actual count, which would tell a client how many others were drawn.
    """
    if config.dp_noise_shares <= 0:
        return 0.0
    return config.dp_noise_multiplier * config.dp_clip_norm / math.sqrt(config.dp_noise_shares)


def unclipped_bit(norm: float, clip_norm: float) -> float:
    """b = 1[‖Δ‖ ≤ C], the bit adaptive clipping counts."""
    return 1.0 if norm <= clip_norm else 0.0


def privatize_update(
    update: ClientUpdate, start: AdapterState, config: FitConfig, noise: NoiseSource
) -> ClientUpdate:
    """A client's side of DP-FedAvg: clip its update to C and, if told, add its noise share.

    The reply's state becomes start + clip(Δ) (+ N(0, z²C²/D) drawn from the client's own
    ``noise``). With the clients adding the noise and adaptive clipping on, its metrics carry
    ``dp_unclipped``: the bit b plus the client's share of the count noise, σ_b/√D; with the
    server adding the noise, the server reads b off the clipped update itself, so nothing
    else leaves the client.
    """
    names = shared_names(start, config)
    clipped, norm = clip(update_delta(update.state, start, names), config.dp_clip_norm)
    std = client_noise_std(config)
    if std > 0:
        shares = gaussian_noise(clipped, std, noise.generator(CLIENT_UPDATE_NOISE))
        clipped = {n: t + shares[n] for n, t in clipped.items()}
    if std > 0 and config.dp_count_noise_std > 0:
        count_std = config.dp_count_noise_std / math.sqrt(config.dp_noise_shares)
        generator = noise.generator(CLIENT_COUNT_NOISE)
        bit = unclipped_bit(norm, config.dp_clip_norm) + gaussian_scalar(count_std, generator)
        update.metrics["dp_unclipped"] = bit
    state = dict(update.state)
    for name in names:
        state[name] = start[name].detach().float().cpu() + clipped[name]
    update.state = state
    return update


def private_mean(
    global_state: AdapterState,
    updates: list[ClientUpdate],
    names: list[str],
    denominator: float,
    clip_norm: float | None,
    noise: AdapterState | None,
) -> tuple[AdapterState, list[float]]:
    """x + (Σ_i clip(Δ_i) + noise) / D over ``names``; other tensors stay as in x.

    Args:
        global_state: x, the adapter the clients started from.
        updates: The replies (already clipped by the clients).
        names: The tensors the clients send (``types.shared_names``).
        denominator: D, fixed by the sampling, never the number of replies.
        clip_norm: Clip each Δ_i again (a trusted server enforces C itself); None when the
            replies carry the clients' noise, which must not be clipped away.
        noise: The noise the server adds per coordinate (all of N(0, z²C²), or what the
            replies lack of it), or None.

    Returns:
        The noised mean state, and each reply's ‖Δ_i‖ as received (before the server's clip).
    """
    total = {n: torch.zeros(global_state[n].shape, dtype=torch.float32) for n in names}
    received_norms = []
    for update in updates:
        delta = update_delta(update.state, global_state, names)
        received_norms.append(global_norm(delta))
        if clip_norm is not None:
            delta, _ = clip(delta, clip_norm)
        for n in names:
            total[n].add_(delta[n])
    mean = {n: t.detach().float().cpu().clone() for n, t in global_state.items()}
    for n in names:
        if noise is not None:
            total[n].add_(noise[n])
        mean[n].add_(total[n] / denominator)
    return mean, received_norms
