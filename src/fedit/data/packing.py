"""Packing: several tokenized examples in one row, each attending only to itself.

``train.packing=true`` keeps every optimizer step's examples exactly as unpacked training draws
them, and changes only how a micro-batch is laid out: instead of one right-padded row per
example, examples are placed first-fit-decreasing into rows of at most ``capacity`` tokens
(``train.cutoff_len``, which no example exceeds). Each example's position ids restart at 0, and
the model is called without a 2-D attention mask: transformers (5.x) then reads the packed
layout from the position ids and builds a block-diagonal causal mask for SDPA / eager
attention, or uses the varlen path of flash attention. Each token therefore sees exactly what it
would see in its own row, so the per-token losses, and the step's loss summed over label tokens
and divided by their count, are those of unpacked training.

The first token of every example gets no label: unpacked, nothing predicts it (the loss shifts
by one), and packed, the token before it belongs to another example. The tail of a row is
padding with its own position ids (a block of its own), so no real token attends to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from fedit.data.templates import IGNORE_INDEX


class Tokenized(Protocol):
    """What packing needs of an example (``data.templates.TokenizedExample``)."""

    @property
    def input_ids(self) -> Sequence[int]: ...

    @property
    def labels(self) -> Sequence[int]: ...


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Example indices per row, first-fit decreasing, no row over ``capacity`` tokens.

    An example longer than ``capacity`` gets a row of its own.
    """
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    rows: list[list[int]] = []
    free: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        length = lengths[index]
        slot = next((r for r, room in enumerate(free) if room >= length), None)
        if slot is None:
            rows.append([index])
            free.append(capacity - length)
        else:
            rows[slot].append(index)
            free[slot] -= length
    return rows


def collate_packed(
    examples: Sequence[Tokenized], pad_token_id: int, capacity: int
) -> dict[str, Tensor]:
    """Pack ``examples`` into rows (see the module docstring).

    Returns:
        ``input_ids``, ``labels`` and ``position_ids``, each (R, T) with T the longest row, and
        ``attention_mask`` (R, T) marking real tokens (for counting only: the model must be
        called without it, so that it reads the packing from ``position_ids``).
    """
    if not examples:
        raise ValueError("collate_packed: got no examples")
    rows = pack_rows([len(example.input_ids) for example in examples], capacity)
    width = max(sum(len(examples[i].input_ids) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    real = torch.zeros((len(rows), width), dtype=torch.long)
    for row, members in enumerate(rows):
        start = 0
        for index in members:
            example = examples[index]
            end = start + len(example.input_ids)
            input_ids[row, start:end] = torch.tensor(example.input_ids, dtype=torch.long)
            labels[row, start:end] = torch.tensor(example.labels, dtype=torch.long)
            labels[row, start] = IGNORE_INDEX  # predicted by the previous example otherwise
            position_ids[row, start:end] = torch.arange(end - start)
            real[row, start:end] = 1
            start = end
        position_ids[row, start:] = torch.arange(width - start)  # padding: a block of its own
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "attention_mask": real,
    }
