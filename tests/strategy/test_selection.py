"""Client selection: Shepherd's count rule, the selectors, seeding per round, determinism."""

import pytest

from fedit.strategy.selection import (
    build_selector,
    client_seed,
    num_selected,
    select_clients,
    select_random,
    select_round_robin,
    select_weighted,
)


@pytest.mark.parametrize(
    ("num_clients", "fraction", "minimum", "expected"),
    [
        (100, 0.05, 1, 5),  # the paper: 5% of 100
        (10, 0.05, 1, 1),  # int(0.5) = 0 -> at least one
        (10, 0.05, 3, 3),  # raised to min_fit_clients
        (8, 0.5, 1, 4),
        (3, 1.0, 5, 3),  # never more than exist
    ],
)
def test_num_selected(num_clients, fraction, minimum, expected):
    assert num_selected(num_clients, fraction, minimum) == expected


def test_selection_is_seeded_per_round():
    first = select_clients(100, 0.1, 1, seed=7, server_round=3)
    assert first == select_clients(100, 0.1, 1, seed=7, server_round=3)
    assert len(first) == 10 and len(set(first)) == 10 and first == sorted(first)
    assert all(0 <= c < 100 for c in first)
    rounds = {tuple(select_clients(100, 0.1, 1, seed=7, server_round=r)) for r in range(1, 6)}
    assert len(rounds) > 1  # different rounds pick different clients
    assert select_clients(100, 0.1, 1, seed=8, server_round=3) != first


def test_selection_covers_clients_uniformly():
    counts = [0] * 10
    for server_round in range(1, 2001):
        for client in select_clients(10, 0.2, 1, seed=0, server_round=server_round):
            counts[client] += 1
    # 2000 rounds x 2 clients = 4000 picks, 400 expected each
    assert all(330 < c < 470 for c in counts), counts


def test_client_seed_unique_and_stable():
    seeds = {client_seed(42, r, c) for r in range(1, 4) for c in range(5)}
    assert len(seeds) == 15
    assert client_seed(42, 2, 3) == client_seed(42, 2, 3)


def test_weighted_selection_prefers_large_clients():
    sizes = [1, 1, 1, 1, 96]
    picks = [select_weighted(r, sizes, 1, seed=3).selected[0] for r in range(1, 201)]
    share = picks.count(4) / len(picks)
    assert 0.9 < share <= 1.0  # expected 96%
    assert select_weighted(5, sizes, 2, seed=3) == select_weighted(5, sizes, 2, seed=3)


def test_weighted_selection_skips_empty_clients():
    assert select_weighted(1, [0, 5, 0, 5], 4, seed=0).selected == [1, 3]


def test_round_robin_visits_everyone_in_turn():
    rounds = [select_round_robin(r, [1] * 5, 2, seed=0).selected for r in range(1, 6)]
    assert rounds == [[0, 1], [2, 3], [0, 4], [1, 2], [3, 4]]


def test_availability_drops_about_the_offline_share():
    select = build_selector("availability", availability=0.7)
    selections = [select(r, [1] * 50, 10, 11) for r in range(1, 101)]
    dropped = sum(len(s.dropped) for s in selections) / 1000
    assert 0.25 < dropped < 0.35  # expected 0.3
    assert all(set(s.participants) | set(s.dropped) == set(s.selected) for s in selections)
    again = build_selector("availability", availability=0.7)(7, [1] * 50, 10, 11)
    assert again == selections[6]  # seeded per round
    always = build_selector("availability", availability=1.0)(7, [1] * 50, 10, 11)
    assert always.dropped == [] and always.selected == select_random(7, [1] * 50, 10, 11).selected


def test_each_instruction_carries_its_client_seed():
    from fedit.config import load_config
    from fedit.strategy import build_strategy

    cfg = load_config(None, ["federation.num_clients=6", "federation.fraction_fit=0.5", "seed=9"])
    _, instructions = build_strategy(cfg).configure_fit(3, {}, [4] * 6, lr=0.1)
    assert [i.config.seed for i in instructions] == [
        client_seed(9, 3, i.client_id) for i in instructions
    ]
    assert len({i.config.seed for i in instructions}) == len(instructions) == 3


def test_poisson_selection_draws_each_client_independently_at_the_rate():
    select = build_selector("poisson", sample_rate=0.1)
    selections = [select(r, [1] * 200, 999, 5) for r in range(1, 101)]
    sizes = [len(s.selected) for s in selections]
    assert 18 < sum(sizes) / len(sizes) < 22  # q·N = 20; the count argument is ignored
    assert len(set(sizes)) > 3  # the size varies from round to round
    assert select(7, [1] * 200, 1, 5) == selections[6]  # seeded per (seed, round)
    assert select(7, [1] * 200, 1, 6) != selections[6]
