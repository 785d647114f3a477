"""Each defence as one function from the round's replies to a ``Verdict``, picked by name.

A verdict says what every client scored, how much of the result it carries, who was rejected,
and what the result is: whole clients (``selected``, handed to the strategy as they are), a
weighted combination of the products (``coefficients``, re-factorised by ``combine``) or, for
the coordinate-wise baselines, a finished state in factor space.

Which clients count as "rejected" depends on the method: krum / multi_krum, the ones not
selected; norm_bound, the ones clipped; geometric_median, the ones farther from the median than
``robust.reject_factor`` × the median distance (their Weiszfeld weight is already small);
trimmed_mean and median reject nobody as a whole, they trim per coordinate.

Every client weighs the same, whatever ``num_examples`` it reports (``client_weights``): the
server cannot check a count, and one client claiming 10⁹ examples would otherwise carry nearly
all of norm_bound's mean, the weighted geometric median and the FedAvg over Krum's selection.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import Tensor

from fedit.config import RobustConfig
from fedit.robust.defences import (
    coordinate_median,
    distances_to_combination,
    geometric_median_weights,
    krum_scores,
    multi_krum_selection,
    norm_bound_factors,
    trimmed_mean,
)
from fedit.robust.gram import norms, update_gram, update_grams
from fedit.types import AdapterState, ClientUpdate


@dataclass
class Verdict:
    """A defence's judgement of one round, indexed like the round's replies."""

    scores: list[float]  # krum score, norm, or distance to the result (method-specific)
    weights: list[float]  # each client's share of the result (0 for a rejected client)
    rejected: list[int]  # indices into the replies
    selected: list[int] | None = None  # whole clients, handed to the strategy as they are
    coefficients: Tensor | None = None  # ΔW = Σ c_i ΔW_i, to re-factorise
    product_gram: Tensor | None = None  # P of ``update_grams``, with coefficients
    state: AdapterState | None = None  # a finished coordinate-wise state (factor space)
    metrics: dict[str, float] = field(default_factory=dict)


# How the clients weigh in a verdict. "uniform" is the defences' rule; "counts" (n_i / Σ n, the
# reported counts) is the weighting before issue 28, kept only so benchmarks/inflate_count.py
# can show what it let one client do. It is not a config option.
Weighting = Literal["uniform", "counts"]


class Judge(Protocol):
    """A defence: the round's replies, judged against the global adapter."""

    def __call__(
        self,
        robust: RobustConfig,
        global_state: AdapterState,
        updates: list[ClientUpdate],
        weighting: Weighting = "uniform",
    ) -> Verdict: ...


def client_weights(updates: list[ClientUpdate], weighting: Weighting = "uniform") -> Tensor:
    """p (K,), float64, summing to 1: each client's share before the defence acts.

    Uniform, 1/K each: every defence's breakdown point is a number of clients, and only with
    equal weights is it the same share of the weight (docs/robustness.md, "Reported counts").
    """
    if weighting == "counts":
        counts = torch.tensor([float(u.num_examples) for u in updates], dtype=torch.float64)
        return counts / counts.sum()
    return torch.full((len(updates),), 1.0 / len(updates), dtype=torch.float64)


def _gram(robust: RobustConfig, global_state: AdapterState, updates: list[ClientUpdate]) -> Tensor:
    return _grams(robust, global_state, updates)[0]


def _grams(
    robust: RobustConfig, global_state: AdapterState, updates: list[ClientUpdate]
) -> tuple[Tensor, Tensor]:
    dtype = getattr(torch, robust.gram_precision)
    gram, products = update_grams(global_state, [u.state for u in updates], dtype)
    return gram.double(), products.double()


def _selection(
    scores: Tensor, selected: list[int], updates: list[ClientUpdate], weighting: Weighting
) -> Verdict:
    p = client_weights(updates, weighting)
    total = float(p[selected].sum())
    weights = [float(p[i]) / total if i in selected else 0.0 for i in range(len(updates))]
    rejected = [i for i in range(len(updates)) if i not in selected]
    return Verdict(scores.tolist(), weights, rejected, selected=selected)


def judge_krum(
    robust: RobustConfig,
    global_state: AdapterState,
    updates: list[ClientUpdate],
    weighting: Weighting = "uniform",
) -> Verdict:
    """Krum: the one update closest to its K − f − 2 nearest neighbours."""
    gram = _gram(robust, global_state, updates)
    best = multi_krum_selection(gram, robust.num_byzantine, keep=1).tolist()
    return _selection(krum_scores(gram, robust.num_byzantine), best, updates, weighting)


def judge_multi_krum(
    robust: RobustConfig,
    global_state: AdapterState,
    updates: list[ClientUpdate],
    weighting: Weighting = "uniform",
) -> Verdict:
    """Multi-Krum: the K − f updates with the lowest Krum scores."""
    gram = _gram(robust, global_state, updates)
    kept = multi_krum_selection(gram, robust.num_byzantine).tolist()
    return _selection(krum_scores(gram, robust.num_byzantine), kept, updates, weighting)


def judge_norm_bound(
    robust: RobustConfig,
    global_state: AdapterState,
    updates: list[ClientUpdate],
    weighting: Weighting = "uniform",
) -> Verdict:
    """Clip every ‖ΔW_i‖ to τ; the mean of the clipped updates."""
    gram, products = _grams(robust, global_state, updates)
    factors = norm_bound_factors(gram, robust.norm_bound, robust.norm_multiple)
    clipped = [i for i, s in enumerate(factors.tolist()) if s < 1.0]
    if not clipped:  # nobody clipped: the plain mean, whole clients
        return _selection(norms(gram), list(range(len(updates))), updates, weighting)
    coefficients = client_weights(updates, weighting) * factors
    return Verdict(
        norms(gram).tolist(),
        coefficients.tolist(),
        clipped,
        coefficients=coefficients,
        product_gram=products,
    )


def judge_geometric_median(
    robust: RobustConfig,
    global_state: AdapterState,
    updates: list[ClientUpdate],
    weighting: Weighting = "uniform",
) -> Verdict:
    """RFA: the geometric median of the ΔW_i by Weiszfeld's iterations."""
    gram, products = _grams(robust, global_state, updates)
    alpha, iterations = geometric_median_weights(gram, client_weights(updates, weighting))
    distances = distances_to_combination(gram, alpha).tolist()
    typical = statistics.median(distances)
    rejected = [i for i, d in enumerate(distances) if d > robust.reject_factor * typical]
    return Verdict(
        distances,
        alpha.tolist(),
        rejected,
        coefficients=alpha,
        product_gram=products,
        metrics={"weiszfeld_iterations": float(iterations)},
    )


def _coordinate_wise(
    reduce: Callable[[Tensor], Tensor], global_state: AdapterState, updates: list[ClientUpdate]
) -> Verdict:
    state = {
        name: reduce(torch.stack([u.state[name].float() for u in updates])) for name in global_state
    }
    # Scores: each client's product distance to the result's, for comparison with the others.
    gram = update_gram(global_state, [*(u.state for u in updates), state])
    last = gram.shape[0] - 1
    distances = torch.diagonal(gram)[:last] - 2 * gram[last, :last] + gram[last, last]
    return Verdict(distances.clamp_min(0).sqrt().tolist(), [], [], state=state)


def judge_trimmed_mean(
    robust: RobustConfig,
    global_state: AdapterState,
    updates: list[ClientUpdate],
    weighting: Weighting = "uniform",
) -> Verdict:
    """Coordinate-wise β-trimmed mean of the factors (Flower's FedTrimmedAvg); unweighted."""
    del weighting
    return _coordinate_wise(
        lambda stacked: trimmed_mean(stacked, robust.trim_fraction), global_state, updates
    )


def judge_median(
    robust: RobustConfig,
    global_state: AdapterState,
    updates: list[ClientUpdate],
    weighting: Weighting = "uniform",
) -> Verdict:
    """Coordinate-wise median of the factors (Flower's FedMedian); unweighted."""
    del robust, weighting
    return _coordinate_wise(coordinate_median, global_state, updates)


JUDGES: dict[str, Judge] = {
    "norm_bound": judge_norm_bound,
    "krum": judge_krum,
    "multi_krum": judge_multi_krum,
    "geometric_median": judge_geometric_median,
    "trimmed_mean": judge_trimmed_mean,
    "median": judge_median,
}
