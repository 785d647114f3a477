"""Confidence intervals and study sizes against worked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedit.evaluation.intervals import (
    BOOTSTRAP_METHOD,
    paired_bootstrap,
    resolving_size,
    t_interval,
)


def test_t_interval_of_three_seeds():
    # mean 2, sd 1, se 1/sqrt(3) = 0.577350; t(0.975, df 2) = 4.302653 -> half-width 2.484138
    interval = t_interval([1.0, 2.0, 3.0])
    assert interval.mean == 2.0
    assert interval.low == pytest.approx(2 - 2.484138, abs=1e-6)
    assert interval.high == pytest.approx(2 + 2.484138, abs=1e-6)
    assert not interval.excludes_zero()


def test_t_interval_needs_two_seeds():
    interval = t_interval([0.4])
    assert interval.mean == 0.4 and math.isnan(interval.low) and math.isnan(interval.high)
    assert "needs 2 or more seeds" in interval.method
    assert not interval.excludes_zero()


def test_bootstrap_of_one_seed_is_the_example_bootstrap():
    # 100 paired differences, half 0 and half 1: mean 0.5, standard error 0.5/sqrt(100) = 0.05,
    # so the 95% interval is close to 0.5 +- 1.96 * 0.05 = [0.402, 0.598]
    diffs = [np.array([0.0, 1.0] * 50)]
    interval = paired_bootstrap(diffs, seed=1)
    assert interval.method == BOOTSTRAP_METHOD
    assert interval.mean == 0.5
    assert interval.low == pytest.approx(0.402, abs=0.012)
    assert interval.high == pytest.approx(0.598, abs=0.012)
    assert interval.excludes_zero()


def test_bootstrap_resamples_seeds_too():
    # Seed A's differences are all 0, seed B's all 1. Drawing two seeds with replacement gives
    # (A, A), (A, B), (B, A), (B, B) with means 0, 0.5, 0.5, 1: the interval is [0, 1], far wider
    # than the examples alone (which have no spread within a seed) would say.
    interval = paired_bootstrap([np.zeros(30), np.ones(30)], seed=0)
    assert (interval.low, interval.high) == (0.0, 1.0)
    assert interval.mean == 0.5


def test_bootstrap_is_reproducible_and_rejects_empty_seeds():
    diffs = [np.array([0.1, -0.2, 0.3]), np.array([0.0, 0.5])]
    assert paired_bootstrap(diffs, seed=3) == paired_bootstrap(diffs, seed=3)
    with pytest.raises(ValueError, match="at least one test example"):
        paired_bootstrap([np.array([])])


def test_resolving_size_with_one_seed():
    # mean 0.5, within-seed variance 0.252525 (ddof 1), target variance (0.5 / 1.959964)^2 =
    # 0.065077: seeds ceil(0.252525 / 100 / 0.065077) = 1, examples ceil(0.252525 / 0.065077) = 4
    size = resolving_size([np.array([0.0, 1.0] * 50)])
    assert (size.seeds, size.examples_per_seed, size.seed_variance_known) == (1, 4, False)


def test_resolving_size_when_seeds_dominate():
    # Per-seed means 0 and 0.2 with no spread inside a seed: between-seed variance 0.02,
    # target (0.1 / 1.959964)^2 = 0.002603. More examples cannot help (2 * 0.002603 < 0.02);
    # seeds: ceil(0.02 / 0.002603) = 8.
    size = resolving_size([np.zeros(50), np.full(50, 0.2)])
    assert size.examples_per_seed is None
    assert size.seeds == 8 and size.seed_variance_known
    assert resolving_size([np.array([1.0, -1.0])]).seeds is None  # nothing to resolve
