"""Selection from the server's records: oort's utility and exploration, fastest, diverse."""

import numpy as np
import pytest

from fedit.config import PartitionConfig
from fedit.config.selection import OortConfig
from fedit.data.partition import count_table, partition_examples
from fedit.server.clock import SimulatedClock
from fedit.server.profiles import ClientProfile
from fedit.strategy.informed import SelectionContext, Work, category_counts, greedy_cover
from fedit.strategy.oort import (
    exploration_rate,
    oort_utilities,
    preferred_duration,
    select_oort,
    system_penalty,
)
from fedit.strategy.selection import among_online, build_selector, select_random


def _oort_example() -> tuple[SelectionContext, list[int]]:
    """Four clients; 0, 1, 2 trained before round 3, client 3 never did.

    sizes 10, 20, 30, 40; last losses 2.0, 1.0, 0.5; last rounds 1, 2, 2; expected times
    (one token each, compute speeds 1/10, 1/40, 1/20, 1/5 tokens per second) 10, 40, 20, 5 s.
    """
    speeds = [0.1, 0.025, 0.05, 0.2]
    context = SelectionContext(
        loss={0: 2.0, 1: 1.0, 2: 0.5},
        last_round={0: 1, 1: 2, 2: 2},
        time_of=lambda client, down, tokens, up: tokens / speeds[client],
        settings=OortConfig(),
    )
    return context, [10, 20, 30, 40]


def test_oort_utility_on_a_hand_computed_example():
    context, sizes = _oort_example()
    times = context.expected_times([0, 1, 2, 3])
    assert times == pytest.approx({0: 10.0, 1: 40.0, 2: 20.0, 3: 5.0})
    # T: the 30th percentile of [5, 10, 20, 40] is the value at rank int(4 * 0.3) = 1: 10 s.
    preferred = preferred_duration(list(times.values()), 30.0)
    assert preferred == 10.0
    penalty = {c: system_penalty(t, preferred, 2.0) for c, t in times.items()}
    # (10/40)^2 = 1/16 and (10/20)^2 = 1/4 for the two slower than T; 1 for the others.
    assert penalty == pytest.approx({0: 1.0, 1: 0.0625, 2: 0.25, 3: 1.0})
    utilities = oort_utilities(3, [0, 1, 2], sizes, context, penalty)
    # |B|·loss: 20, 20, 15; over the largest: 1, 1, 0.75.
    # Staleness at R = 3: sqrt(0.1·ln 3 / 1) = 0.331454, sqrt(0.1·ln 3 / 2) = 0.234373.
    # 0: (1 + 0.331454) · 1 = 1.331454; 1: (1 + 0.234373) / 16 = 0.077148;
    # 2: (0.75 + 0.234373) / 4 = 0.246093.
    assert utilities == pytest.approx({0: 1.331454, 1: 0.077148, 2: 0.246093}, abs=1e-6)


def test_oort_exploration_decays_to_its_floor():
    settings = OortConfig()
    assert exploration_rate(settings, 1) == pytest.approx(0.9)
    assert exploration_rate(settings, 3) == pytest.approx(0.86436)  # 0.9 · 0.98²
    assert exploration_rate(settings, 100) == pytest.approx(0.3)  # 0.9 · 0.98^99 = 0.122


def test_oort_explores_the_unseen_and_exploits_the_best():
    context, sizes = _oort_example()
    # Round 3, two clients: ε = 0.86436, int(2 · 0.13564) = 0 exploited, so one explored, the
    # only unseen client 3; the other seat is exploited: the cut-off 0.95 · 1.331454 leaves
    # client 0 alone.
    for seed in range(5):
        assert sorted(select_oort(3, [0, 1, 2, 3], sizes, 2, seed, context)) == [0, 3]
    # Without the clock there is no system term: client 1's utility is 1.234373, below the
    # cut-off 0.95 · 1.331454 = 1.264881; at cut_off_util=0.1 the cut-off is 1.198309, both
    # 0 and 1 qualify, and the seeds pick either (all exploitation: ε = 0).
    context.time_of = None
    context.settings = OortConfig(exploration_factor=0.0, exploration_min=0.0)
    assert {tuple(select_oort(3, [0, 1, 2], sizes, 1, s, context)) for s in range(20)} == {(0,)}
    context.settings = OortConfig(cut_off_util=0.1, exploration_factor=0.0, exploration_min=0.0)
    picks = {tuple(select_oort(3, [0, 1, 2], sizes, 1, seed, context)) for seed in range(20)}
    assert picks == {(0,), (1,)}


def test_oort_is_deterministic_per_seed_and_explores_first():
    context = SelectionContext(settings=OortConfig())
    sizes = [5, 50, 5, 50, 5, 50]
    first = select_oort(1, list(range(6)), sizes, 2, 7, context)
    assert first == select_oort(1, list(range(6)), sizes, 2, 7, context)
    assert len(set(first)) == 2


def test_fastest_picks_the_shortest_expected_times_on_a_worked_profile():
    # Every client last moved 1000 bytes down, trained 1000 tokens and sent 100 bytes up.
    # time = 1000/down + 1000/speed + 100/up:
    #   0: 1 + 10 + 0.1 = 11.1   1: 10 + 1 + 1 = 12   2: 1 + 2 + 0.1 = 3.1   3: 1 + 1 + 1 = 3
    # Client 1 computes fastest but its network makes it the slowest.
    profiles = [
        ClientProfile(100, 1000, 1000),
        ClientProfile(1000, 100, 100),
        ClientProfile(500, 1000, 1000),
        ClientProfile(1000, 1000, 100),
    ]
    clock = SimulatedClock(profiles, seed=0)
    context = SelectionContext(
        work={c: Work(1000, 1000, 100) for c in range(4)}, time_of=clock.expected_seconds
    )
    fastest = build_selector("fastest", context=context)
    assert fastest(1, [1] * 4, 2, 0).selected == [2, 3]
    assert fastest(1, [1] * 4, 3, 0).selected == [0, 2, 3]
    # Among the online clients only (the clock's availability), by client id.
    online = among_online(fastest, lambda r: [0, 1, 2])
    assert online(1, [1] * 4, 2, 0).selected == [0, 2]


def test_greedy_cover_takes_the_most_new_categories_first():
    covers = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 1, 0, 0]], dtype=bool)
    # Rows 0, 1 and 2 each add two; the tie-break order decides the first pick. After row 0,
    # row 1 adds two more (all four covered); after row 2, rows 0, 1 and 3 add one each.
    assert greedy_cover(covers, 2, np.array([0, 1, 2, 3])) == [0, 1]
    assert greedy_cover(covers, 2, np.array([2, 0, 1, 3])) == [2, 0]
    # Once all are covered, coverage starts over: the third pick is again a two-category row.
    assert greedy_cover(covers, 3, np.array([0, 1, 2, 3])) == [0, 1, 2]


def _coverage(parts_counts: np.ndarray, selected: list[int]) -> int:
    return int((parts_counts[selected] > 0).any(axis=0).sum())


def test_diverse_covers_more_categories_than_random_on_a_shards_split():
    categories = [f"c{k}" for k in range(8)]
    examples = [{"instruction": str(i), "category": categories[i % 8]} for i in range(320)]
    parts = partition_examples(
        examples, 32, PartitionConfig(method="shards", shards_per_client=1), seed=0
    )
    counts = category_counts(count_table(examples, parts))
    assert (counts > 0).sum(axis=1).max() <= 2  # each client one or two categories
    context = SelectionContext(categories=counts)
    diverse = build_selector("diverse", context=context)
    rounds = range(1, 21)
    sizes = [len(p) for p in parts]
    by_diverse = [_coverage(counts, diverse(r, sizes, 4, 0).selected) for r in rounds]
    by_random = [_coverage(counts, select_random(r, sizes, 4, 0).selected) for r in rounds]
    assert min(by_diverse) == 4  # four clients, four distinct categories every round
    assert np.mean(by_diverse) > np.mean(by_random) + 0.5
    assert diverse(3, sizes, 4, 0).selected == diverse(3, sizes, 4, 0).selected


def test_informed_selectors_refuse_what_they_cannot_know():
    with pytest.raises(ValueError, match="fastest needs federation.system"):
        build_selector("fastest")(1, [1] * 3, 1, 0)
    with pytest.raises(ValueError, match="diverse needs the partition"):
        build_selector("diverse")(1, [1] * 3, 1, 0)
    assert len(build_selector("oort")(1, [1] * 3, 2, 0).selected) == 2  # explores, no records
