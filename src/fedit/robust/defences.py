"""The defences' pure math: scores and weights from the clients' Gram matrix, or per coordinate.

Every function here takes the (K, K) Gram matrix of the updates ΔW_i (``gram.update_gram``) or,
for the coordinate-wise baselines, the stacked factor tensors. None of them knows a model.
"""

from __future__ import annotations

import statistics

import torch
from torch import Tensor

from fedit.robust.gram import norms, squared_distances


class DefenceError(ValueError):
    """A round that the chosen defence cannot judge (e.g. too few clients for Krum's f)."""


def krum_scores(gram: Tensor, num_byzantine: int) -> Tensor:
    """Krum's score of every update (Blanchard et al. 2017).

    s(i) = Σ of the K − f − 2 smallest ‖ΔW_i − ΔW_j‖² over j ≠ i. Needs K ≥ 2f + 3, the
    paper's condition K > 2f + 2.

    Raises:
        DefenceError: fewer than 2f + 3 updates.
    """
    count = gram.shape[0]
    if count < 2 * num_byzantine + 3:
        raise DefenceError(
            f"krum with robust.num_byzantine={num_byzantine} needs at least "
            f"{2 * num_byzantine + 3} replies, got {count}"
        )
    distances = squared_distances(gram)
    distances.fill_diagonal_(float("inf"))  # j ≠ i
    closest = torch.sort(distances, dim=1).values[:, : count - num_byzantine - 2]
    return closest.sum(dim=1)


def multi_krum_selection(gram: Tensor, num_byzantine: int, keep: int | None = None) -> Tensor:
    """Indices of the ``keep`` updates with the lowest Krum scores (default K − f), ascending."""
    scores = krum_scores(gram, num_byzantine)
    keep = gram.shape[0] - num_byzantine if keep is None else keep
    order = torch.argsort(scores, stable=True)
    return torch.sort(order[:keep]).values


def geometric_median_weights(
    gram: Tensor,
    weights: Tensor,
    max_iterations: int = 100,
    tolerance: float = 1e-6,
    smoothing: float = 1e-12,
) -> tuple[Tensor, int]:
    """Weiszfeld's iterations for the weighted geometric median, as RFA does (Pillutla et al.).

    The median is z = Σ_i α_i ΔW_i with Σ α_i = 1, so it is kept as α and every distance comes
    from the Gram matrix: ‖ΔW_i − z‖² = G_ii − 2 (G α)_i + αᵀ G α. Each step sets
    α_i ∝ p_i / max(ν, ‖ΔW_i − z‖), starting from α = p; it stops when the objective
    Σ p_i ‖ΔW_i − z‖ improves by less than ``tolerance`` (relative).

    Args:
        gram: (K, K) Gram matrix of the updates.
        weights: p, the clients' non-negative weights (normalised here).
        smoothing: ν, RFA's floor on distances (a point at the median would divide by zero).

    Returns:
        (α (K,), iterations run).
    """
    p = weights.to(gram.dtype) / weights.sum()
    alpha = p.clone()
    previous = float("inf")
    for iteration in range(1, max_iterations + 1):
        distance = _distances_to(gram, alpha)
        objective = float((p * distance).sum())
        if previous - objective <= tolerance * max(objective, 1e-300):
            return alpha, iteration
        previous = objective
        beta = p / distance.clamp_min(smoothing)
        alpha = beta / beta.sum()
    return alpha, max_iterations


def _distances_to(gram: Tensor, alpha: Tensor) -> Tensor:
    """‖ΔW_i − Σ_j α_j ΔW_j‖ for every i."""
    g_alpha = gram @ alpha
    squared = torch.diagonal(gram) - 2 * g_alpha + alpha @ g_alpha
    return squared.clamp_min(0).sqrt()


def distances_to_combination(gram: Tensor, alpha: Tensor) -> Tensor:
    """‖ΔW_i − Σ_j α_j ΔW_j‖ for every i (the geometric median's per-client score)."""
    return _distances_to(gram, alpha.to(gram.dtype))


def norm_bound_factors(gram: Tensor, bound: float | None, median_multiple: float) -> Tensor:
    """s_i = min(1, τ / ‖ΔW_i‖): each update is clipped to norm τ.

    τ is ``bound`` when given, else ``median_multiple`` × the round's median ‖ΔW_i‖ (the upper
    median: ``statistics.median_high``, a norm some client really has).
    """
    update_norms = norms(gram)
    tau = bound if bound is not None else median_multiple * _median(update_norms)
    return torch.where(update_norms > tau, tau / update_norms.clamp_min(1e-300), 1.0)


def _median(values: Tensor) -> float:
    return float(statistics.median_high(values.tolist()))


def trimmed_mean(stacked: Tensor, trim_fraction: float) -> Tensor:
    """Coordinate-wise mean after dropping the ⌊β K⌋ smallest and largest values (Yin et al.).

    ``stacked`` is (K, ...) with one client per row; as Flower's FedTrimmedAvg, unweighted.

    Raises:
        DefenceError: trimming would leave nothing.
    """
    count = stacked.shape[0]
    cut = int(trim_fraction * count)
    if count - 2 * cut < 1:
        raise DefenceError(
            f"trimmed_mean with robust.trim_fraction={trim_fraction} trims all {count} replies"
        )
    ordered = torch.sort(stacked, dim=0).values
    return ordered[cut : count - cut].mean(dim=0)


def coordinate_median(stacked: Tensor) -> Tensor:
    """Coordinate-wise median of (K, ...), the mean of the two middle values for even K."""
    count = stacked.shape[0]
    ordered = torch.sort(stacked, dim=0).values
    return (ordered[(count - 1) // 2] + ordered[count // 2]) / 2
