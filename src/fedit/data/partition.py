"""Hold out a test set and split the training examples across clients (iid, dirichlet, shards, ...).

Every function is pure and seeded: the same examples, settings and seed give the same split.
A partition is a list of example indices per client, each list in ascending order.

Example:
    train, test = split_test(examples, per_category=10, seed=0)
    parts = partition_examples(train, num_clients=10, cfg=cfg.data.partition, seed=0)
    print(format_count_table(count_table(train, parts)))
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from fedit.config import ConfigError, PartitionConfig
from fedit.data.heterogeneity import format_heterogeneity
from fedit.types import Example

logger = logging.getLogger(__name__)

DIRICHLET_MAX_TRIES = 1000


def _labels(examples: list[Example], by: str, key: str) -> list[str]:
    """The value of column ``by`` for every example; ``key`` is the setting named in errors."""
    for example in examples:
        if by not in example:
            available = ", ".join(sorted(example))
            raise ConfigError(f"{key}: column {by!r} not found; available keys: {available}")
    return [example[by] for example in examples]


def split_test(
    examples: list[Example], per_category: int, seed: int, by: str = "category"
) -> tuple[list[Example], list[Example]]:
    """Hold out up to ``per_category`` random examples of every category as the test set.

    A category always keeps at least one training example: one with ``k`` examples gives
    ``min(per_category, k - 1)`` to the test set, so a category with a single example stays in
    training whole.

    Args:
        examples: All examples, before partitioning.
        per_category: Test examples to take from each category (0 holds out nothing).
        seed: Seeds the choice of test examples.
        by: The column whose values are the categories.

    Returns:
        ``(train, test)``, each in the examples' original relative order.
    """
    if per_category < 0:
        raise ConfigError(f"data.test_per_category: must be >= 0, got {per_category}")
    labels = _labels(examples, by, "data.test_per_category")
    rng = np.random.default_rng(seed)
    held_out: set[int] = set()
    for label in sorted(set(labels)):
        members = [i for i, value in enumerate(labels) if value == label]
        take = min(per_category, len(members) - 1)
        if take > 0:
            held_out.update(int(i) for i in rng.choice(members, size=take, replace=False))
    train = [ex for i, ex in enumerate(examples) if i not in held_out]
    test = [ex for i, ex in enumerate(examples) if i in held_out]
    logger.info("held out %d test examples, %d left for training", len(test), len(train))
    return train, test


def natural_num_clients(examples: list[Example], by: str = "category") -> int:
    """How many clients a natural partition by column ``by`` yields: its distinct values."""
    return len(set(_labels(examples, by, "data.partition.by")))


def partition_examples(
    examples: list[Example], num_clients: int, cfg: PartitionConfig, seed: int
) -> list[list[int]]:
    """Split the examples across ``num_clients`` clients with method ``cfg.method``.

    Args:
        examples: The training examples.
        num_clients: How many clients to make.
        cfg: The partition settings (``data.partition``).
        seed: Seeds every random choice.

    Returns:
        For each client, the ascending indices of its examples. Every example goes to exactly
        one client and every client gets at least one example.

    Raises:
        ConfigError: The settings cannot give every client an example, or name a missing column.
    """
    if num_clients < 1:
        raise ConfigError(f"federation.num_clients: must be >= 1, got {num_clients}")
    if num_clients > len(examples):
        raise ConfigError(
            f"federation.num_clients: {num_clients} clients but only {len(examples)} "
            "training examples"
        )
    method = PARTITIONERS.get(cfg.method)
    if method is None:
        choices = ", ".join(PARTITIONERS)
        raise ConfigError(f"data.partition.method: unknown value {cfg.method!r}; choose {choices}")
    parts = method(examples, num_clients, cfg, np.random.default_rng(seed))
    parts = [sorted(int(i) for i in part) for part in parts]
    empty = [client for client, part in enumerate(parts) if not part]
    if empty:
        raise ConfigError(
            f"data.partition.method: {cfg.method} partition left clients {empty} without examples"
        )
    logger.info(
        "partitioned %d examples over %d clients (%s)", len(examples), len(parts), cfg.method
    )
    return parts


def _partition_iid(
    examples: list[Example], num_clients: int, cfg: PartitionConfig, rng: np.random.Generator
) -> list[list[int]]:
    """Shuffle, then cut into near-equal parts (sizes differ by at most one)."""
    order = rng.permutation(len(examples))
    return [part.tolist() for part in np.array_split(order, num_clients)]


def _partition_dirichlet(
    examples: list[Example], num_clients: int, cfg: PartitionConfig, rng: np.random.Generator
) -> list[list[int]]:
    """Give each label's examples to clients in proportions drawn from Dir(alpha).

    Draws again until every client has ``max(min_per_client, 1)`` examples, at most
    DIRICHLET_MAX_TRIES times.
    """
    if cfg.alpha <= 0:
        raise ConfigError(f"data.partition.alpha: must be > 0, got {cfg.alpha}")
    labels = _labels(examples, cfg.by, "data.partition.by")
    minimum = max(cfg.min_per_client, 1)
    if minimum * num_clients > len(examples):
        raise ConfigError(
            f"data.partition.min_per_client: {num_clients} clients x {minimum} examples is more "
            f"than the {len(examples)} training examples"
        )
    by_label = {
        label: np.array([i for i, value in enumerate(labels) if value == label])
        for label in sorted(set(labels))
    }
    for attempt in range(1, DIRICHLET_MAX_TRIES + 1):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for members in by_label.values():
            proportions = rng.dirichlet(np.full(num_clients, cfg.alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(int)
            for client, chunk in enumerate(np.split(rng.permutation(members), cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(part) for part in parts) >= minimum:
            logger.debug("dirichlet partition found on draw %d", attempt)
            return parts
    raise ConfigError(
        f"data.partition.min_per_client: no Dirichlet draw gave every client >= {minimum} "
        f"examples in {DIRICHLET_MAX_TRIES} tries (alpha={cfg.alpha}, {num_clients} clients, "
        f"{len(examples)} examples); raise data.partition.alpha or lower "
        "data.partition.min_per_client or federation.num_clients"
    )


def _partition_shards(
    examples: list[Example], num_clients: int, cfg: PartitionConfig, rng: np.random.Generator
) -> list[list[int]]:
    """Shepherd's method: sort by label, cut into equal shards, deal shards out at random."""
    labels = _labels(examples, cfg.by, "data.partition.by")
    num_shards = cfg.shards_per_client * num_clients
    if num_shards > len(examples):
        raise ConfigError(
            f"data.partition.shards_per_client: {cfg.shards_per_client} shards x {num_clients} "
            f"clients = {num_shards} shards but only {len(examples)} training examples; lower "
            "data.partition.shards_per_client or federation.num_clients"
        )
    order = sorted(range(len(examples)), key=labels.__getitem__)  # stable: ties keep input order
    shards = np.array_split(np.array(order), num_shards)
    dealt = rng.permutation(num_shards).reshape(num_clients, cfg.shards_per_client)
    return [np.concatenate([shards[s] for s in row]).tolist() for row in dealt]


def _partition_natural(
    examples: list[Example], num_clients: int, cfg: PartitionConfig, rng: np.random.Generator
) -> list[list[int]]:
    """One client per distinct value of the label column, in sorted order of the values."""
    labels = _labels(examples, cfg.by, "data.partition.by")
    values = sorted(set(labels))
    if len(values) != num_clients:
        raise ConfigError(
            f"federation.num_clients: natural partition by {cfg.by!r} yields {len(values)} "
            f"clients, got {num_clients}; set federation.num_clients={len(values)}"
        )
    client_of = {value: client for client, value in enumerate(values)}
    parts: list[list[int]] = [[] for _ in values]
    for i, label in enumerate(labels):
        parts[client_of[label]].append(i)
    return parts


def split_client_tests(
    parts: list[list[int]], fraction: float, seed: int
) -> tuple[list[list[int]], list[list[int]]]:
    """Keep ``fraction`` of every client's examples out of its training, as its own test share.

    A client with two or more examples gives ``round(fraction * n)`` of them, at least one and
    never all; a client with fewer gives none. With ``fraction`` 0 the parts come back unchanged.

    Returns:
        ``(train_parts, test_parts)``: disjoint, each list in ascending order.
    """
    if fraction <= 0:
        return [list(part) for part in parts], [[] for _ in parts]
    rng = np.random.default_rng([seed, len(parts), 17])  # apart from the partition's stream
    train_parts, test_parts = [], []
    for part in parts:
        take = min(max(round(fraction * len(part)), 1), len(part) - 1) if len(part) >= 2 else 0
        held = set(rng.choice(part, size=take, replace=False).tolist()) if take else set()
        train_parts.append([i for i in part if i not in held])
        test_parts.append(sorted(held))
    return train_parts, test_parts


Partitioner = Callable[[list[Example], int, PartitionConfig, np.random.Generator], list[list[int]]]

PARTITIONERS: dict[str, Partitioner] = {
    "iid": _partition_iid,
    "dirichlet": _partition_dirichlet,
    "shards": _partition_shards,
    "natural": _partition_natural,
}


def count_table(
    examples: list[Example], parts: list[list[int]], by: str = "category"
) -> dict[str, Any]:
    """Examples per client and per value of ``by``, in the shape written to partition.json.

    Returns:
        ``{"categories": [sorted values], "clients": [{"client": i, "num_examples": n,
        "counts": {value: n, ...}}, ...]}``; every client's counts list every value, zeros too.
    """
    labels = _labels(examples, by, "data.partition.by")
    categories = sorted(set(labels))
    clients = []
    for client, part in enumerate(parts):
        counts = Counter(labels[i] for i in part)
        clients.append(
            {
                "client": client,
                "num_examples": len(part),
                "counts": {category: counts.get(category, 0) for category in categories},
            }
        )
    return {"categories": categories, "clients": clients}


def format_count_table(table: dict[str, Any]) -> str:
    """A plain-text table of ``count_table``'s result: one row per client, plus a total row;
    under it, the split's heterogeneity statistics when the table carries them."""
    categories: list[str] = table["categories"]
    header = ["client", *categories, "total"]
    rows = [
        [str(c["client"]), *(str(c["counts"].get(cat, 0)) for cat in categories)]
        + [str(c["num_examples"])]
        for c in table["clients"]
    ]
    totals = [sum(c["counts"].get(cat, 0) for c in table["clients"]) for cat in categories]
    grand_total = sum(c["num_examples"] for c in table["clients"])
    rows.append(["total", *(str(n) for n in totals), str(grand_total)])
    widths = [max(len(row[col]) for row in [header, *rows]) for col in range(len(header))]

    def render(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells).rstrip()

    rule = "-" * len(render(header))
    lines = [render(header), rule, *(render(row) for row in rows[:-1]), rule, render(rows[-1])]
    if "heterogeneity" in table:
        lines.append(format_heterogeneity(table["heterogeneity"]))
    return "\n".join(lines)
