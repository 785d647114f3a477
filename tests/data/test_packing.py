"""Packing: rows of several examples give the loss, gradients and updates of unpacked batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedit.client.batching import collate
from fedit.client.loss import token_loss_sum
from fedit.client.train import train_local
from fedit.config import ConfigError, TrainConfig, load_config
from fedit.data.packing import collate_packed, pack_rows
from fedit.data.templates import IGNORE_INDEX, TokenizedExample
from fedit.model import get_adapter_state
from helpers import tiny_lora


def test_pack_rows_places_every_example_once_within_capacity() -> None:
    lengths = [50, 10, 40, 30, 60, 20, 70, 5]
    rows = pack_rows(lengths, capacity=100)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 100 for row in rows)
    assert len(rows) == 3  # 285 tokens need at least 3 rows of 100
    assert pack_rows([150, 20], capacity=100) == [[0], [1]]  # too long: a row of its own


def test_packed_layout_restarts_positions_and_drops_the_boundary_label() -> None:
    examples = [
        TokenizedExample([1, 2, 3], [1, 2, 3], "a", False),
        TokenizedExample([4, 5], [4, 5], "a", False),
    ]
    batch = collate_packed(examples, pad_token_id=0, capacity=8)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    # Token 4 opens the second example: unpacked nothing predicts it, so packed neither.
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, 3, IGNORE_INDEX, 5]]
    padded = collate_packed(examples, pad_token_id=0, capacity=3)
    assert padded["position_ids"].tolist() == [[0, 1, 2], [0, 1, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


@pytest.mark.parametrize("train_on_inputs", [False, True])
def test_packed_loss_and_gradients_equal_unpacked(
    tiny_model_dir: Path, train_on_inputs: bool
) -> None:
    model, tokenizer, examples = tiny_lora(tiny_model_dir, train_on_inputs=train_on_inputs)
    capacity = max(len(e.input_ids) for e in examples) * 3  # several examples a row
    results = []
    for batch in (
        collate(examples, tokenizer.pad_token_id),
        collate_packed(examples, tokenizer.pad_token_id, capacity),
    ):
        model.zero_grad(set_to_none=True)
        total, _ = token_loss_sum(model, batch)
        total.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((total.detach(), grads, batch["input_ids"].shape))
    (unpacked, unpacked_grads, unpacked_shape), (packed, packed_grads, packed_shape) = results
    assert packed_shape[0] < unpacked_shape[0]  # really packed: fewer rows
    torch.testing.assert_close(packed, unpacked, rtol=1e-5, atol=1e-5)
    assert packed_grads.keys() == unpacked_grads.keys() and packed_grads
    for name, grad in unpacked_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6)


def test_packed_training_matches_unpacked_training(tiny_model_dir: Path) -> None:
    model, _, examples = tiny_lora(tiny_model_dir)
    start = get_adapter_state(model)
    updates = []
    for packing in (False, True):
        cfg = TrainConfig(
            local_steps=3, batch_size=4, micro_batch_size=4, autocast="none",
            group_by_length=False, packing=packing,
        )  # fmt: skip
        updates.append(
            train_local(model, examples, cfg, client_id=0, lr=1e-2, seed=0, global_state=start)
        )
    unpacked, packed = updates
    assert packed.train_loss == pytest.approx(unpacked.train_loss, rel=1e-5)
    assert packed.metrics["tokens"] == unpacked.metrics["tokens"]
    assert packed.metrics["padding_waste"] < unpacked.metrics["padding_waste"]
    for key, value in unpacked.state.items():
        torch.testing.assert_close(packed.state[key], value, rtol=1e-3, atol=1e-5)


def test_packing_is_refused_where_rows_must_be_examples() -> None:
    assert load_config(None, ["train.packing=true"]).train.packing
    for extra in ("train.objective=dpo", "privacy.level=example"):
        with pytest.raises(ConfigError, match="train.packing"):
            load_config(None, ["train.packing=true", extra])
