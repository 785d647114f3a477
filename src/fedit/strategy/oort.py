"""Oort's guided participant selection (Lai et al., OSDI 2021): ``federation.selection=oort``.

A selector, not an aggregation strategy. A client the server has heard from (it reported a
training loss) has the utility::

    U_i = |B_i| · sqrt(1/|B_i| · Σ_{k∈B_i} loss_k²)       statistical utility
        ≈ |B_i| · loss_i                                  (each example's loss ≈ the reported mean)
    U_i ← U_i / max_j U_j + sqrt(0.1 · log R / L_i)       R this round, L_i its last round
    U_i ← U_i · (T / t_i)^α            if t_i > T         α = round_penalty

t_i is its expected time on the simulated clock and T the round's preferred duration, the
``round_threshold``-th percentile of the candidates' expected times; without
``federation.system`` there is no clock and no system term. The statistical utilities are
divided by the largest so that they and the staleness bonus are on one scale (Oort's code
min-max normalises with a clipped maximum instead).

A share ε of the round goes to clients never heard from, sampled in proportion to their data
size times the same system penalty; ε = max(exploration_factor · exploration_decay^(R-1),
exploration_min). The rest are sampled, in proportion to utility, among the clients whose
utility is at least (1 - cut_off_util) times that of the k-th best, k the number exploited.
Oort's pacer (``pacer_step``, ``pacer_delta``: T relaxed when utility stalls) and its
blacklist are not built.
"""

from __future__ import annotations

import math

import numpy as np

from fedit.config.selection import OortConfig
from fedit.strategy.informed import SelectionContext, informed_rng

STALENESS_WEIGHT = 0.1  # the paper's constant in sqrt(0.1 · log R / L_i)


def exploration_rate(settings: OortConfig, server_round: int) -> float:
    """ε of ``server_round``: the share of the round given to unexplored clients."""
    decayed = settings.exploration_factor * settings.exploration_decay ** (server_round - 1)
    return max(decayed, settings.exploration_min)


def preferred_duration(times: list[float], round_threshold: float) -> float:
    """T: the ``round_threshold``-th percentile of ``times`` (the sorted value at that rank)."""
    ordered = sorted(times)
    return ordered[min(int(len(ordered) * round_threshold / 100), len(ordered) - 1)]


def system_penalty(time: float, preferred: float, round_penalty: float) -> float:
    """(T / t)^α for a client slower than T, else 1."""
    return (preferred / time) ** round_penalty if time > preferred else 1.0


def oort_utilities(
    server_round: int,
    explored: list[int],
    sizes: list[int],
    context: SelectionContext,
    penalty: dict[int, float],
) -> dict[int, float]:
    """Each explored client's utility: normalised statistical utility, staleness, penalty."""
    statistical = {c: sizes[c] * abs(context.loss[c]) for c in explored}
    top = max(statistical.values(), default=0.0) or 1.0
    return {
        c: (
            statistical[c] / top
            + math.sqrt(STALENESS_WEIGHT * math.log(server_round) / context.last_round[c])
        )
        * penalty.get(c, 1.0)
        for c in explored
    }


def _sample(
    clients: list[int], weights: list[float], count: int, rng: np.random.Generator
) -> list[int]:
    """``count`` of ``clients`` without replacement, in proportion to ``weights``."""
    if count <= 0:
        return []
    p = np.asarray(weights, dtype=np.float64)
    if (p > 0).sum() < count:  # too few with weight: uniform
        p = np.ones(len(clients))
    chosen = rng.choice(len(clients), size=count, replace=False, p=p / p.sum())
    return [clients[int(i)] for i in chosen]


def exploit(
    utilities: dict[int, float], count: int, cut_off_util: float, rng: np.random.Generator
) -> list[int]:
    """``count`` clients sampled by utility among those above the cut-off."""
    if count <= 0:
        return []
    ranked = sorted(utilities, key=lambda c: (-utilities[c], c))
    cut_off = (1 - cut_off_util) * utilities[ranked[count - 1]]
    pool = [c for c in ranked if utilities[c] >= cut_off]
    return _sample(pool, [utilities[c] for c in pool], count, rng)


def select_oort(
    server_round: int,
    candidates: list[int],
    sizes: list[int],
    count: int,
    seed: int,
    context: SelectionContext,
) -> list[int]:
    """Oort's pick of ``count`` among ``candidates`` (client ids; ``sizes`` by client id)."""
    settings = context.settings or OortConfig()
    times = context.expected_times(candidates)
    penalty: dict[int, float] = {}
    if times:
        preferred = preferred_duration(list(times.values()), settings.round_threshold)
        penalty = {
            c: system_penalty(t, preferred, settings.round_penalty) for c, t in times.items()
        }
    explored = [c for c in candidates if c in context.loss]
    unexplored = [c for c in candidates if c not in context.loss]
    count = min(count, len(candidates))
    epsilon = exploration_rate(settings, server_round)
    exploit_count = min(int(count * (1 - epsilon)), len(explored))
    explore_count = min(count - exploit_count, len(unexplored))
    exploit_count = count - explore_count  # too few unexplored: exploit more
    rng = informed_rng(seed, server_round)
    utilities = oort_utilities(server_round, explored, sizes, context, penalty)
    chosen = exploit(utilities, exploit_count, settings.cut_off_util, rng)
    weights = [sizes[c] * penalty.get(c, 1.0) for c in unexplored]
    return chosen + _sample(unexplored, weights, explore_count, rng)
