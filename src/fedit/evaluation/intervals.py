"""Confidence intervals for a study repeated over seeds, and how large a study would resolve one.

Two methods, each named wherever it is reported:

- ``t_interval``: a Student-t interval over per-seed values (a model's mean metric per seed).
  It needs two seeds or more.
- ``paired_bootstrap``: a two-level percentile bootstrap of paired differences over seeds and
  test examples. Each resample draws seeds with replacement, then within each drawn seed that
  seed's test examples with replacement, and averages the differences it drew. It captures both
  the seed-to-seed spread (split, initialisation, selection) and the finite test set; with a
  single seed it is the ordinary bootstrap over test examples.

``resolving_size`` estimates, from the measured variance, how many test examples per seed or
how many seeds a 95% interval would need to exclude zero if the mean difference stayed as
measured: Var(mean) ≈ σ_seed²/S + σ_example²/(S·n), with σ_example² the pooled within-seed
variance and σ_seed² the between-seed variance of the per-seed means less its example part.

Example:
    diffs = [fedit_scores - local_scores for each seed]   # numpy arrays, one per seed
    interval = paired_bootstrap(diffs, seed=0)
    if not interval.excludes_zero():
        print(resolving_size(diffs))
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLES = 10_000
T_METHOD = "t-interval over seeds"
BOOTSTRAP_METHOD = "paired bootstrap over seeds x test examples"
CLIENT_BOOTSTRAP_METHOD = "paired bootstrap over seeds x clients"


@dataclass(frozen=True)
class Interval:
    """A mean with its ``level`` confidence interval; ``low``/``high`` are nan when undefined."""

    mean: float
    low: float
    high: float
    method: str
    level: float = LEVEL

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def half_width(self) -> float:
        return (self.high - self.low) / 2


def as_json(interval: Interval) -> dict[str, Any]:
    """An Interval as JSON: undefined bounds (one seed) become null."""
    return {
        key: None if isinstance(value, float) and math.isnan(value) else value
        for key, value in dataclasses.asdict(interval).items()
    }


def t_interval(values: list[float] | np.ndarray, level: float = LEVEL) -> Interval:
    """Student-t interval of the mean of ``values`` (nan bounds for fewer than two values)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("t_interval: got no values")
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, math.nan, math.nan, f"{T_METHOD} (needs 2 or more seeds)", level)
    half = float(stats.t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Interval(mean, mean - half, mean + half, T_METHOD, level)


def paired_bootstrap(
    diffs: list[np.ndarray],
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = 0,
    method: str = BOOTSTRAP_METHOD,
) -> Interval:
    """Percentile interval of the mean paired difference, resampling seeds then test examples.

    Args:
        diffs: One array per seed: score of model A minus score of model B on each test example
            of that seed (the seeds' test sets may differ in size), or on each client.
        level: Confidence level.
        resamples: Bootstrap resamples.
        seed: Seeds the resampling, so a report is reproducible.
        method: How the interval is named where it is reported (the unit resampled).
    """
    arrays = [np.asarray(d, dtype=float) for d in diffs]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError("paired_bootstrap: every seed needs at least one test example")
    rng = np.random.default_rng(seed)
    num_seeds = len(arrays)
    drawn_seeds = rng.integers(num_seeds, size=(resamples, num_seeds))
    totals = np.zeros(resamples)
    counts = np.zeros(resamples)
    for position in range(num_seeds):
        for s, values in enumerate(arrays):
            rows = np.flatnonzero(drawn_seeds[:, position] == s)
            if rows.size:
                picks = rng.integers(values.size, size=(rows.size, values.size))
                totals[rows] += values[picks].sum(axis=1)
                counts[rows] += values.size
    means = totals / counts
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    mean = float(np.concatenate(arrays).mean())
    return Interval(mean, float(low), float(high), method, level)


@dataclass(frozen=True)
class ResolvingSize:
    """What would make a 95% interval exclude zero at the measured mean difference."""

    examples_per_seed: int | None  # None: more test examples alone cannot (seed spread)
    seeds: int | None  # None: there is no difference to resolve (mean exactly 0)
    seed_variance_known: bool  # False with one seed: the seed-to-seed part is assumed 0

    def sentence(self, examples_now: int, seeds_now: int) -> str:
        if self.seeds is None:
            return "the measured difference is exactly zero; no study size resolves it"
        parts = [f"about {self.seeds} seeds at {examples_now} test examples each"]
        if self.examples_per_seed is not None:
            parts.append(f"about {self.examples_per_seed} test examples per seed at {seeds_now}")
        text = " or ".join(parts) + " would resolve it if the difference held"
        if not self.seed_variance_known:
            text += " (one seed: the seed-to-seed spread is unmeasured and taken as 0)"
        return text


def resolving_size(diffs: list[np.ndarray], level: float = LEVEL) -> ResolvingSize:
    """Seeds, or test examples per seed, for a ``level`` interval to exclude zero (see module)."""
    arrays = [np.asarray(d, dtype=float) for d in diffs]
    pooled = np.concatenate(arrays)
    mean = float(pooled.mean())
    known = len(arrays) >= 2
    if mean == 0.0:
        return ResolvingSize(None, None, known)
    z = float(stats.norm.ppf((1 + level) / 2))
    target = (mean / z) ** 2  # the largest variance of the mean that still excludes zero
    n = float(np.mean([a.size for a in arrays]))
    within = float(np.mean([a.var(ddof=1) if a.size > 1 else 0.0 for a in arrays]))
    between = 0.0
    if known:
        seed_means = np.array([a.mean() for a in arrays])
        between = max(0.0, float(seed_means.var(ddof=1)) - within / n)
    seeds_now = len(arrays)
    seeds = max(1, math.ceil((between + within / n) / target))
    room = seeds_now * target - between
    examples = max(1, math.ceil(within / room)) if room > 0 else None
    return ResolvingSize(examples, seeds, known)
