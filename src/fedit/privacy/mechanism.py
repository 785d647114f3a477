"""The Gaussian mechanism on LoRA updates: L2 clipping, seeded noise, the private mean.

An update Δ_i is the change of the LoRA tensors a client trains, taken as one vector (keys in
sorted order). DP-FedAvg (McMahan et al. 2018) clips each Δ_i to norm C, sums, adds
N(0, z²C²) per coordinate (at the server, or as N(0, z²C²/m) from each of m clients), and
divides by a fixed denominator D (the expected number of clients), so the global step is
x + (Σ clip(Δ_i) + noise) / D. The weights are uniform whatever the data sizes: with
example-weighted means the sensitivity would be C·max w_i, not C/D.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedit.types import AdapterState, ClientUpdate, FitConfig

# Tags that keep each noise stream apart from the others drawn from the same seed.
SERVER_UPDATE_NOISE, SERVER_COUNT_NOISE, CLIENT_UPDATE_NOISE, CLIENT_COUNT_NOISE = 1, 2, 3, 4
EXAMPLE_NOISE = 5


def noise_generator(*seed_parts: int) -> torch.Generator:
    """A CPU generator seeded from ``seed_parts``, e.g. (seed, round, tag) or (client seed, tag)."""
    seed = int(np.random.SeedSequence([int(p) for p in seed_parts]).generate_state(1)[0])
    return torch.Generator().manual_seed(seed)


def trained_names(state: AdapterState, trainable: str) -> list[str]:
    """The tensors a client changes (sorted): all LoRA tensors, or B only (FFA-LoRA)."""
    return sorted(n for n in state if trainable == "all" or ".lora_B." in n)


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


def gaussian_noise(like: AdapterState, std: float, generator: torch.Generator) -> AdapterState:
    """N(0, std²) per coordinate, shaped like ``like``, drawn in sorted key order."""
    return {
        n: torch.randn(like[n].shape, generator=generator, dtype=torch.float32) * std
        for n in sorted(like)
    }


def privatize_update(update: ClientUpdate, start: AdapterState, config: FitConfig) -> ClientUpdate:
    """A client's side of DP-FedAvg: clip its update to C and, if told, add its noise share.

    The reply's state becomes start + clip(Δ) (+ N(0, dp_update_noise_std²)). Its metrics
    carry ``dp_unclipped``, 1 if ‖Δ‖ ≤ C (adaptive clipping counts these), plus the count
    noise share when the clients add the noise.
    """
    names = trained_names(start, config.trainable)
    clipped, norm = clip(update_delta(update.state, start, names), config.dp_clip_norm)
    if config.dp_update_noise_std > 0:
        noise = gaussian_noise(
            clipped, config.dp_update_noise_std, noise_generator(config.seed, CLIENT_UPDATE_NOISE)
        )
        clipped = {n: t + noise[n] for n, t in clipped.items()}
    unclipped = 1.0 if norm <= config.dp_clip_norm else 0.0
    if config.dp_count_noise_std > 0:
        generator = noise_generator(config.seed, CLIENT_COUNT_NOISE)
        unclipped += float(torch.randn((), generator=generator)) * config.dp_count_noise_std
    state = dict(update.state)
    for name in names:
        state[name] = start[name].detach().float().cpu() + clipped[name]
    update.state = state
    update.metrics["dp_unclipped"] = unclipped
    return update


def private_mean(
    global_state: AdapterState,
    updates: list[ClientUpdate],
    names: list[str],
    denominator: float,
    clip_norm: float | None,
    noise: AdapterState | None,
) -> tuple[AdapterState, int]:
    """x + (Σ_i clip(Δ_i) + noise) / D over ``names``; other tensors stay as in x.

    Args:
        global_state: x, the adapter the clients started from.
        updates: The replies (already clipped by the clients).
        names: The tensors the clients train.
        denominator: D, fixed by the sampling, never the number of replies.
        clip_norm: Clip each Δ_i again (a trusted server enforces C itself); None when the
            replies carry the clients' noise, which must not be clipped away.
        noise: The server's N(0, z²C²) per coordinate, or None.

    Returns:
        The noised mean state and how many replies the server had to clip.
    """
    total = {n: torch.zeros(global_state[n].shape, dtype=torch.float32) for n in names}
    clipped_count = 0
    for update in updates:
        delta = update_delta(update.state, global_state, names)
        if clip_norm is not None:
            delta, norm = clip(delta, clip_norm)
            clipped_count += norm > clip_norm * (1 + 1e-6)
        for n in names:
            total[n].add_(delta[n])
    mean = {n: t.detach().float().cpu().clone() for n, t in global_state.items()}
    for n in names:
        if noise is not None:
            total[n].add_(noise[n])
        mean[n].add_(total[n] / denominator)
    return mean, clipped_count
