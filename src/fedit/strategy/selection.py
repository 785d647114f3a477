"""Client selection, seeded per round so a resumed run picks the same clients.

Selection is the strategy's first phase (``Strategy.configure_fit``), as in Flower.

Every selector is a plain function ``(round, client_sizes, count, seed) -> Selection`` in the
``SELECTORS`` registry, picked by ``federation.selection``. Those that read what the server knows
of its clients (oort, fastest, diverse: ``strategy.informed``) are ``Informed`` selectors, bound
to the strategy's ``SelectionContext``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedit.strategy.informed import InformedPick, SelectionContext, select_diverse, select_fastest
from fedit.strategy.oort import select_oort


@dataclass
class Selection:
    """The clients asked to train in a round, and those of them that dropped out (offline)."""

    selected: list[int]
    dropped: list[int] = field(default_factory=list)

    @property
    def participants(self) -> list[int]:
        """Selected clients that answer."""
        return [c for c in self.selected if c not in set(self.dropped)]


def num_selected(num_clients: int, fraction_fit: float, min_fit_clients: int) -> int:
    """Shepherd's ``max(int(fraction * N), 1)``, raised to ``min_fit_clients``, capped at N."""
    return min(num_clients, max(int(fraction_fit * num_clients), 1, min_fit_clients))


def _rng(seed: int, server_round: int) -> np.random.Generator:
    return np.random.default_rng([seed, server_round])


def select_clients(
    num_clients: int, fraction_fit: float, min_fit_clients: int, seed: int, server_round: int
) -> list[int]:
    """Uniformly sample clients without replacement; the same (seed, round) gives the same set."""
    count = num_selected(num_clients, fraction_fit, min_fit_clients)
    return select_random(server_round, [1] * num_clients, count, seed).selected


def select_random(server_round: int, sizes: list[int], count: int, seed: int) -> Selection:
    """Uniform without replacement (Shepherd, FedAvg)."""
    chosen = _rng(seed, server_round).choice(len(sizes), size=count, replace=False)
    return Selection(sorted(int(c) for c in chosen))


def select_weighted(server_round: int, sizes: list[int], count: int, seed: int) -> Selection:
    """Without replacement, with probability proportional to each client's number of examples."""
    weights = np.asarray(sizes, dtype=np.float64)
    if weights.sum() <= 0:
        return select_random(server_round, sizes, count, seed)
    # Clients without data can only fill the sample once every client with data is taken.
    count_with_data = int((weights > 0).sum())
    chosen = _rng(seed, server_round).choice(
        len(sizes), size=min(count, count_with_data), replace=False, p=weights / weights.sum()
    )
    return Selection(sorted(int(c) for c in chosen))


def select_round_robin(server_round: int, sizes: list[int], count: int, seed: int) -> Selection:
    """Consecutive blocks of ``count`` clients, wrapping around: every client takes turns."""
    del seed  # deterministic by construction
    start = (server_round - 1) * count
    return Selection(sorted({(start + i) % len(sizes) for i in range(count)}))


def availability_selector(probability: float) -> Selector:
    """Random selection after which each selected client is online with ``probability``.

    Offline clients are the round's dropouts: they were asked to train and never answered,
    which is what a server sees when a device goes away mid-round.
    """

    def select(server_round: int, sizes: list[int], count: int, seed: int) -> Selection:
        selection = select_random(server_round, sizes, count, seed)
        online = np.random.default_rng([seed, server_round, 1]).random(len(selection.selected))
        pairs = zip(selection.selected, online, strict=True)
        selection.dropped = [client for client, draw in pairs if draw >= probability]
        return selection

    return select


def poisson_selector(sample_rate: float) -> Selector:
    """Each client independently with probability ``sample_rate``; the round's size varies.

    This is the sampling that privacy amplification by Poisson sampling assumes
    (``federation.selection=poisson``); ``count`` is ignored.
    """

    def select(server_round: int, sizes: list[int], count: int, seed: int) -> Selection:
        del count
        draws = np.random.default_rng([seed, server_round, 2]).random(len(sizes))
        return Selection([int(c) for c in np.flatnonzero(draws < sample_rate)])

    return select


Selector = Callable[[int, list[int], int, int], Selection]


class Informed:
    """A selector that picks client ids from a ``SelectionContext`` (oort, fastest, diverse)."""

    def __init__(self, pick: InformedPick, context: SelectionContext | None = None):
        self.pick = pick
        self.context = context

    def bound(self, context: SelectionContext) -> Informed:
        """The same selector reading ``context``."""
        return Informed(self.pick, context)

    def __call__(self, server_round: int, sizes: list[int], count: int, seed: int) -> Selection:
        return self.among(list(range(len(sizes))), server_round, sizes, count, seed)

    def among(
        self, candidates: list[int], server_round: int, sizes: list[int], count: int, seed: int
    ) -> Selection:
        """``count`` of ``candidates`` (client ids; ``sizes`` indexed by client id)."""
        if self.context is None:
            raise ValueError("an informed selector needs a SelectionContext (build_selector)")
        picked = self.pick(server_round, candidates, sizes, count, seed, self.context)
        return Selection(sorted(picked))


def among_online(
    selector: Selector, online: Callable[[int], list[int]], over_select: float = 1.0
) -> Selector:
    """``selector`` over the clients ``online(round)`` lists, asking for ceil(count × over_select).

    An offline client cannot be selected, as a device that has not checked in cannot
    (``federation.system``'s availability); over-selection asks for more clients than the round
    needs, as production FL does (Bonawitz et al. 2019). ``online`` lists client ids in order.
    """

    def select(server_round: int, sizes: list[int], count: int, seed: int) -> Selection:
        ids = online(server_round)
        wanted = min(len(ids), math.ceil(count * over_select - 1e-9))
        if not ids:
            return Selection([])
        if isinstance(selector, Informed):  # it reads records by client id
            return selector.among(ids, server_round, sizes, wanted, seed)
        inner = selector(server_round, [sizes[c] for c in ids], wanted, seed)
        return Selection([ids[i] for i in inner.selected], [ids[i] for i in inner.dropped])

    return select


SELECTORS: dict[str, Selector] = {
    "random": select_random,
    "weighted": select_weighted,
    "round_robin": select_round_robin,
    "oort": Informed(select_oort),
    "fastest": Informed(select_fastest),
    "diverse": Informed(select_diverse),
}


def client_seed(seed: int, server_round: int, client_id: int) -> int:
    """A training seed unique to (run seed, round, client), independent of what ran before."""
    return int(np.random.SeedSequence([seed, server_round, client_id]).generate_state(1)[0])


def build_selector(
    name: str,
    availability: float = 1.0,
    sample_rate: float = 1.0,
    context: SelectionContext | None = None,
) -> Selector:
    """The selector named by ``federation.selection``; informed ones read ``context``."""
    if name == "availability":
        return availability_selector(availability)
    if name == "poisson":
        return poisson_selector(sample_rate)
    if name not in SELECTORS:
        raise ValueError(f"federation.selection: unknown value {name!r}")
    selector = SELECTORS[name]
    if isinstance(selector, Informed):
        return selector.bound(context or SelectionContext())
    return selector
