"""Seeded batch order (optionally grouped by length) and right-padded collation of examples.

Grouping by length: shuffle, sort each mega-chunk of ~50 batches by length, cut it into batches,
then shuffle the batches. Batches hold examples of similar length (little padding) while the
order in which they are seen stays random.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from fedit.data.templates import IGNORE_INDEX, TokenizedExample

MEGA_CHUNK_BATCHES = 50  # batches per sorted chunk: larger = less padding, less randomness

Batch = dict[str, Tensor]


def collate(examples: Sequence[TokenizedExample], pad_token_id: int) -> Batch:
    """Right-pad examples into tensors.

    Returns:
        ``input_ids`` (B, T) padded with ``pad_token_id``, ``attention_mask`` (B, T) with 0 on
        padding, and ``labels`` (B, T) with ``IGNORE_INDEX`` on padding.
    """
    if not examples:
        raise ValueError("collate: got no examples")
    longest = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, :length] = 1
        labels[row, :length] = torch.tensor(example.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def batch_indices(
    lengths: Sequence[int], batch_size: int, *, seed: int, group_by_length: bool
) -> list[list[int]]:
    """One epoch of batches as lists of example indices; every index appears exactly once.

    Args:
        lengths: Token length of each example.
        batch_size: Examples per batch; the last batch (of each mega-chunk) may be smaller.
        seed: Seeds the shuffle, so the same seed gives the same batches.
        group_by_length: Batch examples of similar length together.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    chunk = MEGA_CHUNK_BATCHES * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        # Longest first inside a chunk; the stable sort keeps the shuffle among equal lengths.
        ranked = sorted(order[start : start + chunk], key=lambda i: -lengths[i])
        batches += [ranked[i : i + batch_size] for i in range(0, len(ranked), batch_size)]
    rng.shuffle(batches)
    return batches


def iterate_batches(
    examples: Sequence[TokenizedExample], batch_size: int, *, seed: int, group_by_length: bool
) -> Iterator[list[TokenizedExample]]:
    """Batches of examples forever: epoch after epoch, each with its own seeded order."""
    if not examples:
        raise ValueError("iterate_batches: got no examples")
    lengths = [len(example.input_ids) for example in examples]
    epoch = 0
    while True:
        epoch_seed = seed if epoch == 0 else hash_seed(seed, epoch)
        for indices in batch_indices(
            lengths, batch_size, seed=epoch_seed, group_by_length=group_by_length
        ):
            yield [examples[i] for i in indices]
        epoch += 1


def hash_seed(seed: int, epoch: int) -> int:
    """A seed for a later epoch, derived deterministically from the run's seed."""
    # A string seed is hashed with sha512, so this is stable across processes (unlike hash()).
    return random.Random(f"{seed}:{epoch}").getrandbits(63)


def split_micro_batches(
    batch: Sequence[TokenizedExample], micro_batch_size: int
) -> list[list[TokenizedExample]]:
    """Cut one optimizer batch into forward passes of at most ``micro_batch_size`` examples."""
    return [list(batch[i : i + micro_batch_size]) for i in range(0, len(batch), micro_batch_size)]


def padding_stats(batches: Sequence[Batch]) -> dict[str, float]:
    """How much of the collated batches is padding.

    Returns:
        ``real_tokens`` (non-padding tokens), ``padded_tokens`` (all token slots after padding,
        real + pad) and ``waste_fraction`` (pad slots / all slots, 0 when there are none).
    """
    real = sum(int(batch["attention_mask"].sum()) for batch in batches)
    slots = sum(batch["attention_mask"].numel() for batch in batches)
    return {
        "real_tokens": real,
        "padded_tokens": slots,
        "waste_fraction": (slots - real) / slots if slots else 0.0,
    }
