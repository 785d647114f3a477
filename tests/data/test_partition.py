"""Tests for fedit.data.partition against splits worked out by hand on tiny inputs."""

from __future__ import annotations

from collections import Counter

import pytest

from fedit.config import ConfigError, PartitionConfig
from fedit.data.partition import (
    count_table,
    format_count_table,
    natural_num_clients,
    partition_examples,
    split_test,
)


def make_examples(categories: list[str]) -> list[dict[str, str]]:
    return [
        {"instruction": f"q{i}", "input": "", "output": f"a{i}", "category": category}
        for i, category in enumerate(categories)
    ]


def flatten(parts: list[list[int]]) -> list[int]:
    return sorted(i for part in parts for i in part)


# --- split_test -------------------------------------------------------------------------------


def test_split_test_counts_per_category_and_keeps_order() -> None:
    examples = make_examples(["a"] * 5 + ["b"] * 3 + ["c"])
    train, test = split_test(examples, per_category=2, seed=0)
    assert Counter(ex["category"] for ex in test) == {"a": 2, "b": 2}
    # "b" has 3: 2 held out, 1 left. "c" has 1: it stays in training.
    assert Counter(ex["category"] for ex in train) == {"a": 3, "b": 1, "c": 1}
    positions = [examples.index(ex) for ex in train]
    assert positions == sorted(positions)
    positions = [examples.index(ex) for ex in test]
    assert positions == sorted(positions)
    assert sorted(ex["instruction"] for ex in train + test) == sorted(
        ex["instruction"] for ex in examples
    )


def test_split_test_leaves_one_training_example_per_category() -> None:
    examples = make_examples(["a"] * 4 + ["b"] * 2)
    train, test = split_test(examples, per_category=10, seed=0)
    assert Counter(ex["category"] for ex in test) == {"a": 3, "b": 1}
    assert Counter(ex["category"] for ex in train) == {"a": 1, "b": 1}


def test_split_test_zero_holds_out_nothing_and_seed_matters() -> None:
    examples = make_examples(["a"] * 20)
    assert split_test(examples, per_category=0, seed=0) == (examples, [])
    _, test0 = split_test(examples, per_category=5, seed=0)
    _, test0_again = split_test(examples, per_category=5, seed=0)
    _, test1 = split_test(examples, per_category=5, seed=1)
    assert test0 == test0_again
    assert test0 != test1


def test_split_test_errors() -> None:
    examples = make_examples(["a", "b"])
    with pytest.raises(ConfigError, match="data.test_per_category: must be >= 0, got -1"):
        split_test(examples, per_category=-1, seed=0)
    with pytest.raises(ConfigError, match="column 'topic' not found; available keys: category"):
        split_test(examples, per_category=1, seed=0, by="topic")


# --- iid --------------------------------------------------------------------------------------


def test_iid_sizes_and_coverage() -> None:
    examples = make_examples(["a"] * 10)
    parts = partition_examples(examples, 3, PartitionConfig(method="iid"), seed=0)
    assert [len(part) for part in parts] == [4, 3, 3]
    assert flatten(parts) == list(range(10))
    assert all(part == sorted(part) for part in parts)
    assert parts == partition_examples(examples, 3, PartitionConfig(method="iid"), seed=0)
    assert parts != partition_examples(examples, 3, PartitionConfig(method="iid"), seed=1)


# --- shards -----------------------------------------------------------------------------------


def test_shards_are_contiguous_runs_of_the_label_sorted_order() -> None:
    # Sorted by category (stable) the indices are [1, 2 | 0, 5 | 4, 7 | 3, 6]: shards a, b, c, d.
    # No union of two unsorted runs ({0, 1}, {2, 3}, ...) equals a union of two of these shards.
    examples = make_examples(["b", "a", "a", "d", "c", "b", "d", "c"])
    cfg = PartitionConfig(method="shards", shards_per_client=2)
    shards = [{1, 2}, {0, 5}, {4, 7}, {3, 6}]
    for seed in range(3):
        parts = partition_examples(examples, 2, cfg, seed=seed)
        assert flatten(parts) == list(range(8))
        for part in parts:
            owned = [shard for shard in shards if shard <= set(part)]
            assert len(owned) == 2 and set().union(*owned) == set(part)
            assert sorted(Counter(examples[i]["category"] for i in part).values()) == [2, 2]


def test_shards_assignment_depends_on_seed() -> None:
    examples = make_examples([str(i) for i in range(12)])
    cfg = PartitionConfig(method="shards", shards_per_client=1)
    by_seed = {tuple(map(tuple, partition_examples(examples, 12, cfg, seed=s))) for s in range(5)}
    assert len(by_seed) > 1


def test_shards_need_enough_examples() -> None:
    cfg = PartitionConfig(method="shards", shards_per_client=3)
    with pytest.raises(ConfigError, match="^data.partition.shards_per_client: 3 shards x 4"):
        partition_examples(make_examples(["a"] * 10), 4, cfg, seed=0)


# --- natural ----------------------------------------------------------------------------------


def test_natural_one_client_per_value_in_sorted_order() -> None:
    examples = make_examples(["b", "a", "c", "a", "b"])
    assert natural_num_clients(examples) == 3
    parts = partition_examples(examples, 3, PartitionConfig(method="natural"), seed=0)
    assert parts == [[1, 3], [0, 4], [2]]


def test_natural_wrong_client_count() -> None:
    examples = make_examples(["a", "b"] * 5)
    with pytest.raises(ConfigError) as err:
        partition_examples(examples, 3, PartitionConfig(method="natural"), seed=0)
    assert str(err.value) == (
        "federation.num_clients: natural partition by 'category' yields 2 clients, got 3; "
        "set federation.num_clients=2"
    )


# --- dirichlet --------------------------------------------------------------------------------


def test_dirichlet_is_seeded_and_covers_everything() -> None:
    examples = make_examples(["a", "b", "c", "d"] * 25)
    cfg = PartitionConfig(method="dirichlet", alpha=0.5, min_per_client=1)
    parts = partition_examples(examples, 5, cfg, seed=0)
    assert parts == partition_examples(examples, 5, cfg, seed=0)
    assert parts != partition_examples(examples, 5, cfg, seed=1)
    assert flatten(parts) == list(range(100))


def test_dirichlet_respects_min_per_client() -> None:
    examples = make_examples(["a", "b"] * 20)
    cfg = PartitionConfig(method="dirichlet", alpha=0.3, min_per_client=5)
    for seed in range(5):
        parts = partition_examples(examples, 4, cfg, seed=seed)
        assert min(len(part) for part in parts) >= 5


def test_dirichlet_small_alpha_skews_more_than_large() -> None:
    examples = make_examples(["a", "b", "c", "d"] * 50)

    def categories_per_client(alpha: float) -> float:
        cfg = PartitionConfig(method="dirichlet", alpha=alpha, min_per_client=1)
        parts = partition_examples(examples, 4, cfg, seed=0)
        return sum(len({examples[i]["category"] for i in p}) for p in parts) / len(parts)

    assert categories_per_client(0.05) < categories_per_client(100.0) == 4


def test_dirichlet_errors() -> None:
    examples = make_examples(["a", "b"] * 10)
    with pytest.raises(ConfigError, match="^data.partition.alpha: must be > 0, got 0$"):
        partition_examples(examples, 2, PartitionConfig(method="dirichlet", alpha=0), seed=0)
    infeasible = PartitionConfig(method="dirichlet", min_per_client=11)
    with pytest.raises(ConfigError, match="^data.partition.min_per_client: 2 clients x 11"):
        partition_examples(examples, 2, infeasible, seed=0)
    # With alpha this small each label lands on one client, so one of three clients stays short.
    hopeless = PartitionConfig(method="dirichlet", alpha=0.001, min_per_client=6)
    with pytest.raises(ConfigError, match="no Dirichlet draw gave every client >= 6"):
        partition_examples(examples, 3, hopeless, seed=0)


# --- shared errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["iid", "dirichlet", "shards", "natural"])
def test_more_clients_than_examples(method: str) -> None:
    with pytest.raises(ConfigError) as err:
        partition_examples(make_examples(["a"] * 20), 50, PartitionConfig(method=method), seed=0)
    assert str(err.value) == "federation.num_clients: 50 clients but only 20 training examples"


@pytest.mark.parametrize("method", ["dirichlet", "shards", "natural"])
def test_missing_label_column(method: str) -> None:
    cfg = PartitionConfig(method=method, by="speaker")
    with pytest.raises(ConfigError) as err:
        partition_examples(make_examples(["a", "b"] * 4), 2, cfg, seed=0)
    assert str(err.value) == (
        "data.partition.by: column 'speaker' not found; "
        "available keys: category, input, instruction, output"
    )


def test_bad_client_count_and_method() -> None:
    examples = make_examples(["a"] * 4)
    with pytest.raises(ConfigError, match="^federation.num_clients: must be >= 1, got 0$"):
        partition_examples(examples, 0, PartitionConfig(method="iid"), seed=0)
    with pytest.raises(ConfigError, match="^data.partition.method: unknown value 'random'"):
        partition_examples(examples, 2, PartitionConfig(method="random"), seed=0)


# --- count table ------------------------------------------------------------------------------


def test_count_table_and_its_text() -> None:
    examples = make_examples(["b", "a", "c", "a", "b"])
    table = count_table(examples, [[1, 3], [0, 4, 2]])
    assert table == {
        "categories": ["a", "b", "c"],
        "clients": [
            {"client": 0, "num_examples": 2, "counts": {"a": 2, "b": 0, "c": 0}},
            {"client": 1, "num_examples": 3, "counts": {"a": 0, "b": 2, "c": 1}},
        ],
    }
    text = format_count_table(table)
    lines = text.splitlines()
    assert lines[0].split() == ["client", "a", "b", "c", "total"]
    assert lines[2].split() == ["0", "2", "0", "0", "2"]
    assert lines[3].split() == ["1", "0", "2", "1", "3"]
    assert lines[-1].split() == ["total", "2", "2", "1", "5"]
    assert len({len(line) for line in lines if not line.startswith("-")}) <= 2
