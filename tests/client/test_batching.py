"""Collation, seeded (length-grouped) batch order and padding statistics."""

from __future__ import annotations

import random
from itertools import islice

import torch

from fedit.client.batching import (
    batch_indices,
    collate,
    iterate_batches,
    padding_stats,
    split_micro_batches,
)
from fedit.data.templates import IGNORE_INDEX, TokenizedExample


def _example(length: int, category: str = "c", prompt: int = 1) -> TokenizedExample:
    ids = list(range(10, 10 + length))
    return TokenizedExample(ids, [IGNORE_INDEX] * prompt + ids[prompt:], category, False)


def test_collate_right_pads() -> None:
    batch = collate([_example(3), _example(5, prompt=2)], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 0, 0], [10, 11, 12, 13, 14]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, 11, 12, -100, -100], [-100, -100, 12, 13, 14]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_padding_stats_by_hand() -> None:
    batches = [collate([_example(3), _example(5)], 0), collate([_example(4)], 0)]
    stats = padding_stats(batches)
    # real 3 + 5 + 4 = 12; slots 2 x 5 + 1 x 4 = 14.
    assert stats == {"real_tokens": 12, "padded_tokens": 14, "waste_fraction": 2 / 14}
    assert padding_stats([])["waste_fraction"] == 0.0


def _epoch_waste(lengths: list[int], group: bool) -> float:
    examples = [_example(n) for n in lengths]
    batches = batch_indices(lengths, 8, seed=0, group_by_length=group)
    return padding_stats([collate([examples[i] for i in b], 0) for b in batches])["waste_fraction"]


def test_grouping_reduces_padding() -> None:
    lengths = [random.Random(i).randint(5, 300) for i in range(400)]
    grouped, plain = _epoch_waste(lengths, True), _epoch_waste(lengths, False)
    assert grouped < 0.1 < plain
    assert grouped < plain / 4


def test_every_example_once_per_epoch_and_seeded() -> None:
    lengths = [random.Random(i).randint(1, 50) for i in range(1003)]
    for group in (True, False):
        batches = batch_indices(lengths, 16, seed=3, group_by_length=group)
        assert sorted(i for b in batches for i in b) == list(range(1003))
        assert all(1 <= len(b) <= 16 for b in batches)
        assert batches == batch_indices(lengths, 16, seed=3, group_by_length=group)
        assert batches != batch_indices(lengths, 16, seed=4, group_by_length=group)


def test_grouped_order_is_shuffled() -> None:
    lengths = list(range(1, 801))
    batches = batch_indices(lengths, 4, seed=0, group_by_length=True)
    longest = [max(lengths[i] for i in b) for b in batches]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


def test_iterate_batches_cycles_with_new_order() -> None:
    examples = [_example(n + 1) for n in range(10)]
    stream = iterate_batches(examples, 4, seed=0, group_by_length=False)
    epoch_one, epoch_two = list(islice(stream, 3)), list(islice(stream, 3))
    for epoch in (epoch_one, epoch_two):
        assert sorted(len(e.input_ids) for b in epoch for e in b) == list(range(1, 11))
    assert [len(b) for b in epoch_one] == [4, 4, 2]
    assert epoch_one != epoch_two


def test_split_micro_batches() -> None:
    batch = [_example(n + 1) for n in range(5)]
    assert [len(m) for m in split_micro_batches(batch, 2)] == [2, 2, 1]
    assert split_micro_batches(batch, 8) == [batch]
