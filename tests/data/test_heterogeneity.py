"""The split's heterogeneity statistics against values worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedit.config import load_config
from fedit.data.heterogeneity import LENGTH_QUARTILES, format_heterogeneity, heterogeneity
from fedit.data.partition import format_count_table
from fedit.data.prepare import prepare_data

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def _examples(labels: list[str], outputs: list[str] | None = None) -> list[dict[str, str]]:
    outputs = outputs or ["x"] * len(labels)
    return [
        {"instruction": "i", "input": "", "output": out, "category": label}
        for label, out in zip(labels, outputs, strict=True)
    ]


def test_two_clients_by_hand():
    # client 0: a a b b -> (1/2, 1/2); client 1: a a a a -> (1, 0); pooled: 6 a, 2 b -> (3/4, 1/4)
    examples = _examples(["a", "a", "b", "b", "a", "a", "a", "a"])
    stats = heterogeneity(examples, [[0, 1, 2, 3], [4, 5, 6, 7]])
    first, second = stats["clients"]
    assert first["entropy_bits"] == pytest.approx(1.0)
    assert first["effective_labels"] == pytest.approx(2.0)
    assert second["entropy_bits"] == 0.0 and second["effective_labels"] == pytest.approx(1.0)
    # JS = H(M) - (H(P) + H(Q)) / 2 in bits, with H(3/4, 1/4) = 0.811278:
    # client 0: M = (5/8, 3/8), H(M) = 0.954434 -> 0.954434 - (1 + 0.811278) / 2 = 0.048795
    # client 1: M = (7/8, 1/8), H(M) = 0.543564 -> 0.543564 - (0 + 0.811278) / 2 = 0.137925
    assert first["js_divergence"] == pytest.approx(0.048795, abs=1e-6)
    assert second["js_divergence"] == pytest.approx(0.137925, abs=1e-6)
    assert stats["js_divergence"]["mean"] == pytest.approx((0.048795 + 0.137925) / 2, abs=1e-6)
    assert stats["js_divergence"]["max"] == pytest.approx(0.137925, abs=1e-6)
    assert stats["size_cv"] == 0.0
    assert stats["measured_over"] == "category" and stats["labels"] == ["a", "b"]


def test_disjoint_clients_have_divergence_one_from_each_other_but_not_from_the_mix():
    examples = _examples(["a", "a", "b", "b"])
    stats = heterogeneity(examples, [[0, 1], [2, 3]])
    # each client (1, 0) against the pooled (1/2, 1/2): M = (3/4, 1/4), JS = 0.811278 - 1/2
    assert stats["js_divergence"]["max"] == pytest.approx(0.311278, abs=1e-6)


def test_quantity_skew_and_an_empty_client():
    examples = _examples(["a", "b"] * 4)
    stats = heterogeneity(examples, [[0, 1], [2, 3, 4, 5, 6, 7], []])
    # sizes 2, 6, 0: mean 8/3, population std sqrt(((2-8/3)^2 + (6-8/3)^2 + (8/3)^2) / 3) = 2.494438
    assert stats["size_cv"] == pytest.approx(2.494438 / (8 / 3), abs=1e-6)
    assert stats["clients"][2] == {
        "client": 2,
        "entropy_bits": None,
        "effective_labels": None,
        "js_divergence": None,
    }
    assert stats["js_divergence"]["max"] == pytest.approx(0.0, abs=1e-12)  # both clients iid


def test_without_categories_it_measures_response_length_quartiles_and_says_so():
    outputs = ["x" * n for n in (1, 2, 3, 4, 5, 6, 7, 8)]
    examples = _examples(["default"] * 8, outputs)
    stats = heterogeneity(examples, [[0, 1, 2, 3], [4, 5, 6, 7]])  # short vs long answers
    assert stats["measured_over"] == LENGTH_QUARTILES
    assert stats["labels"] == ["Q1", "Q2", "Q3", "Q4"]
    assert [c["effective_labels"] for c in stats["clients"]] == pytest.approx([2.0, 2.0])
    # each client (1/2, 1/2, 0, 0) against the pooled (1/4, 1/4, 1/4, 1/4): M = (3/8, 3/8, 1/8,
    # 1/8), H(M) = 1.811278, so JS = 1.811278 - (1 + 2) / 2
    assert stats["js_divergence"]["max"] == pytest.approx(0.311278, abs=1e-6)
    assert "response-length quartiles" in format_heterogeneity(stats)


def test_partition_json_and_the_count_table_carry_them(tmp_path):
    cfg = load_config(QUICKSTART, ["data.partition.method=iid", f"output_dir={tmp_path}"])
    table = prepare_data(cfg).table
    stats = json.loads(json.dumps(table))["heterogeneity"]
    assert stats["measured_over"] == "category"
    assert len(stats["clients"]) == cfg.federation.num_clients
    assert stats["js_divergence"]["max"] < 0.1  # iid: every client close to the global mix
    text = format_count_table(table)
    assert "Jensen–Shannon divergence from the global mix" in text


def test_client_test_shares_are_disjoint_from_training_and_zero_changes_nothing(tmp_path):
    from fedit.data.partition import partition_examples, split_client_tests

    parts = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 11], [12]]
    train, test = split_client_tests(parts, 0.2, seed=1)
    assert [len(t) for t in test] == [2, 1, 0]  # round(0.2 n), at least 1, never all
    for whole, kept, held in zip(parts, train, test, strict=True):
        assert not set(kept) & set(held) and sorted(kept + held) == whole
    assert split_client_tests(parts, 0.2, seed=1) == (train, test)  # seeded
    assert split_client_tests(parts, 0.0, seed=1) == (parts, [[], [], []])

    base = load_config(QUICKSTART, [f"output_dir={tmp_path}"])
    data = prepare_data(base)
    expected = partition_examples(data.train, 8, base.data.partition, base.seed)
    assert data.parts == expected and not any(data.client_test)  # today's split, unchanged
    assert "client_test" not in data.table
    held = prepare_data(
        load_config(QUICKSTART, [f"output_dir={tmp_path}", "data.client_test_fraction=0.1"])
    )
    assert held.table["client_test"] == [len(t) for t in held.client_test]
    for client, part in enumerate(held.parts):
        trained = {id(held.train[i]) for i in part}
        assert not trained & {id(e) for e in held.client_test[client]}
    assert held.table["num_train"] + sum(held.table["client_test"]) == len(data.train)


def test_client_test_fraction_must_be_below_one(tmp_path):
    from fedit.config import ConfigError

    with pytest.raises(
        ConfigError, match=r"data.client_test_fraction: must be in \[0, 1\), got 1.0"
    ):
        load_config(QUICKSTART, ["data.client_test_fraction=1.0"])
