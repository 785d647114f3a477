"""Selection from what the server knows of its clients: records, profiles, categories.

``federation.selection`` = ``oort`` (``strategy.oort``), ``fastest`` or ``diverse`` reads a
``SelectionContext``: each client's last training loss, the round it last trained and the work
it did (bytes and tokens), all from the round records of metrics.jsonl (so a resumed run knows
what the first run learnt); the simulated clock's expected time of a client
(``federation.system``); and the partition's examples per client and category
(``partition.json``). The round loop fills it (``server.loop``); the selectors only read it.

These selectors pick among client *ids*: ``among_online`` hands them the online ids as
``candidates`` instead of renumbering the clients as it does for the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedit.config.selection import OortConfig

# (client id, bytes down, tokens, bytes up) -> simulated seconds (server.clock)
TimeModel = Callable[[int, int, int, int], float]
# Seed-sequence tag of these selectors' draws, apart from the other selectors' streams.
_INFORMED_STREAM = 4


@dataclass
class Work:
    """What one client's round moved and computed: the clock's inputs."""

    bytes_down: int
    tokens: int
    bytes_up: int


@dataclass
class SelectionContext:
    """What the server knows of its clients when it selects.

    ``time_of`` is None without ``federation.system`` profiles; ``categories`` (clients x
    categories, examples per cell) is None when the partition is unknown.
    """

    loss: dict[int, float] = field(default_factory=dict)  # last reported training loss
    last_round: dict[int, int] = field(default_factory=dict)  # the last round it trained
    work: dict[int, Work] = field(default_factory=dict)  # its last round's bytes and tokens
    time_of: TimeModel | None = None
    categories: np.ndarray | None = None
    settings: OortConfig | None = None  # federation.oort

    def observe(self, record: dict[str, Any]) -> None:
        """Learn from one metrics.jsonl round record (round 0, the base evaluation, has none)."""
        for client, loss in record.get("train_loss", {}).items():
            self.loss[int(client)] = float(loss)
            self.last_round[int(client)] = int(record["round"])
        for client, metrics in record.get("client_metrics", {}).items():
            if "tokens" in metrics:
                self.work[int(client)] = Work(
                    int(metrics.get("bytes_down", 0)),
                    int(metrics["tokens"]),
                    int(metrics.get("bytes_up", 0)),
                )

    def expected_times(self, candidates: list[int]) -> dict[int, float] | None:
        """Each candidate's expected seconds on the clock, or None without profiles.

        A client that trained is expected to repeat its last round's work; one that never
        trained, the mean work of those that did; before anyone trained, one token and no
        bytes, which ranks clients by compute speed alone.
        """
        if self.time_of is None:
            return None
        seen = list(self.work.values())
        typical = Work(
            int(np.mean([w.bytes_down for w in seen])) if seen else 0,
            int(np.mean([w.tokens for w in seen])) if seen else 1,
            int(np.mean([w.bytes_up for w in seen])) if seen else 0,
        )
        return {
            client: self.time_of(client, work.bytes_down, work.tokens, work.bytes_up)
            for client in candidates
            for work in [self.work.get(client, typical)]
        }


def category_counts(table: dict[str, Any]) -> np.ndarray:
    """partition.json's examples per client and category, as a (clients, categories) array."""
    categories = table["categories"]
    return np.array(
        [[c["counts"].get(name, 0) for name in categories] for c in table["clients"]],
        dtype=np.int64,
    )


def informed_rng(seed: int, server_round: int) -> np.random.Generator:
    """These selectors' random draws, the same for the same (seed, round)."""
    return np.random.default_rng([seed, server_round, _INFORMED_STREAM])


def select_fastest(
    server_round: int,
    candidates: list[int],
    sizes: list[int],
    count: int,
    seed: int,
    context: SelectionContext,
) -> list[int]:
    """The ``count`` candidates with the shortest expected time (ties: a seeded order).

    Raises:
        ValueError: no profiles (config refuses ``fastest`` without ``federation.system``).
    """
    del sizes
    times = context.expected_times(candidates)
    if times is None:
        raise ValueError("federation.selection=fastest needs federation.system profiles")
    tie_break = informed_rng(seed, server_round).permutation(len(candidates))
    order = sorted(range(len(candidates)), key=lambda i: (times[candidates[i]], tie_break[i]))
    return [candidates[i] for i in order[:count]]


def greedy_cover(covers: np.ndarray, count: int, tie_break: np.ndarray) -> list[int]:
    """Rows of ``covers`` (rows x categories, bool) chosen greedily to cover most categories.

    Each pick adds the most categories not yet covered; ties go to the row earliest in
    ``tie_break`` (a permutation of the rows). Once every category a row can add is covered,
    coverage starts over, so later picks again spread across categories.
    """
    chosen: list[int] = []
    covered = np.zeros(covers.shape[1], dtype=bool)
    rank = np.empty(len(tie_break), dtype=np.int64)
    rank[tie_break] = np.arange(len(tie_break))
    while len(chosen) < min(count, len(covers)):
        left = [r for r in range(len(covers)) if r not in set(chosen)]
        gains = [int((covers[r] & ~covered).sum()) for r in left]
        if max(gains) == 0 and covered.any():
            covered[:] = False
            continue
        best = max(range(len(left)), key=lambda i: (gains[i], -rank[left[i]]))
        chosen.append(left[best])
        covered |= covers[left[best]]
    return chosen


def select_diverse(
    server_round: int,
    candidates: list[int],
    sizes: list[int],
    count: int,
    seed: int,
    context: SelectionContext,
) -> list[int]:
    """Candidates that together cover the most categories (greedy set cover, seeded ties).

    Raises:
        ValueError: the partition's categories are unknown.
    """
    del sizes
    if context.categories is None:
        raise ValueError("federation.selection=diverse needs the partition's categories")
    covers = context.categories[candidates] > 0
    tie_break = informed_rng(seed, server_round).permutation(len(candidates))
    return [candidates[r] for r in greedy_cover(covers, count, tie_break)]


InformedPick = Callable[[int, list[int], list[int], int, int, SelectionContext], list[int]]
