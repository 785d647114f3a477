"""Client selection: Shepherd's count rule, seeding per round, determinism."""

import pytest

from fedit.server.sampling import client_seed, num_selected, select_clients


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
