"""Client selection, seeded per round so a resumed run picks the same clients."""

from __future__ import annotations

import numpy as np


def num_selected(num_clients: int, fraction_fit: float, min_fit_clients: int) -> int:
    """Shepherd's ``max(int(fraction * N), 1)``, raised to ``min_fit_clients``, capped at N."""
    return min(num_clients, max(int(fraction_fit * num_clients), 1, min_fit_clients))


def select_clients(
    num_clients: int, fraction_fit: float, min_fit_clients: int, seed: int, server_round: int
) -> list[int]:
    """Uniformly sample clients without replacement; the same (seed, round) gives the same set."""
    rng = np.random.default_rng([seed, server_round])
    count = num_selected(num_clients, fraction_fit, min_fit_clients)
    return sorted(int(c) for c in rng.choice(num_clients, size=count, replace=False))


def client_seed(seed: int, server_round: int, client_id: int) -> int:
    """A training seed unique to (run seed, round, client), independent of what ran before."""
    return int(np.random.SeedSequence([seed, server_round, client_id]).generate_state(1)[0])
