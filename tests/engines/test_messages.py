"""Instructions and updates as bytes: round trips, compression, FFA-LoRA's half upload."""

from __future__ import annotations

import pytest
import torch

from fedit.engines.messages import (
    MessageError,
    pack_instruction,
    pack_update,
    unpack_instruction,
    unpack_update,
)
from fedit.types import ClientUpdate, FitInstruction

A_KEY = "m.q_proj.lora_A.weight"
B_KEY = "m.q_proj.lora_B.weight"


def _states():
    generator = torch.Generator().manual_seed(0)
    received = {
        A_KEY: torch.randn(8, 64, generator=generator),
        B_KEY: torch.randn(64, 8, generator=generator),
    }
    trained = {k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in received.items()}
    return received, trained


def test_instruction_round_trip_is_exact():
    received, _ = _states()
    instruction = FitInstruction(
        3, received, {"lr": 1e-3, "rank": 8, "scaffold": True}, {"server_control": received}
    )
    back = unpack_instruction(pack_instruction(instruction))
    assert back.client_id == 3 and back.config == instruction.config
    assert all(torch.equal(back.state[k], received[k]) for k in received)
    assert torch.equal(back.extras["server_control"][A_KEY], received[A_KEY])


def test_uncompressed_update_is_bit_exact_and_sized_as_fp32():
    received, trained = _states()
    update = ClientUpdate(1, trained, 10, 0.5, 2, {"tokens": 7}, {"control_delta": trained})
    message = pack_update(update, received, {"compression": "none"})
    tensor_bytes = sum(t.numel() * 4 for t in trained.values())
    assert 2 * tensor_bytes < len(message) < 2 * tensor_bytes + 2048  # adapter + Δc + headers
    back = unpack_update(message, received)
    assert all(torch.equal(back.state[k], trained[k]) for k in trained)
    assert back.num_examples == 10 and back.metrics["tokens"] == 7
    assert torch.equal(back.extras["control_delta"][B_KEY], trained[B_KEY])


@pytest.mark.parametrize(
    ("compression", "ratio"), [("fp16", 0.5), ("int8", 0.25), ("int8_channel", 0.25)]
)
def test_compressed_upload_sends_a_small_delta(compression, ratio):
    received, trained = _states()
    update = ClientUpdate(1, trained, 10, 0.5, 2)
    message = pack_update(update, received, {"compression": compression})
    raw = len(pack_update(ClientUpdate(1, trained, 10, 0.5, 2), received, {"compression": "none"}))
    assert len(message) < raw * ratio + 1024
    back = unpack_update(message, received)
    for key in trained:
        error = (back.state[key] - trained[key]).abs().max().item()
        assert 0 < error < 1e-3  # lossy, but only on the small delta (|Δ| ~ 0.03)
    assert update.metrics["compression_error"]["relative_error"] < 0.01


def test_ffa_lora_uploads_only_b():
    received, trained = _states()
    trained[A_KEY] = received[A_KEY].clone()
    full = pack_update(ClientUpdate(0, trained, 1, 0.0, 1), received, {"trainable": "all"})
    half = pack_update(ClientUpdate(0, trained, 1, 0.0, 1), received, {"trainable": "lora_B"})
    assert len(half) < 0.55 * len(full)
    back = unpack_update(half, received)
    assert torch.equal(back.state[A_KEY], received[A_KEY])
    assert torch.equal(back.state[B_KEY], trained[B_KEY])


def test_garbage_is_rejected():
    with pytest.raises(MessageError):
        unpack_update(b"not a message at all", {})
    received, trained = _states()
    message = pack_update(ClientUpdate(0, trained, 1, 0.0, 1), received, {})
    with pytest.raises(MessageError):
        unpack_update(message[:-10], received)
