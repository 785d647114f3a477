"""Instructions and updates as bytes: round trips, compression, FFA-LoRA's half upload, and the
checks that refuse a malformed instruction or reply by name."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fedit.engines.messages import (
    MalformedReplyError,
    MessageError,
    _join,
    _split,
    pack_instruction,
    pack_update,
    unpack_instruction,
    unpack_update,
)
from fedit.types import ClientUpdate, FitConfig, FitInstruction, shared_names

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


def _sent(received, **config) -> FitInstruction:
    """The instruction a reply answers: client 1, with ``config`` on top of the defaults."""
    return FitInstruction(1, received, FitConfig(lr=1e-3, rank=8, seed=0, **config))


def test_instruction_round_trip_is_exact():
    received, _ = _states()
    instruction = FitInstruction(
        3, received, FitConfig(lr=1e-3, rank=8, seed=0, scaffold=True), {"server_control": received}
    )
    back = unpack_instruction(pack_instruction(instruction))
    assert back.client_id == 3 and back.config == instruction.config
    assert all(torch.equal(back.state[k], received[k]) for k in received)
    assert torch.equal(back.extras["server_control"][A_KEY], received[A_KEY])


def test_uncompressed_update_is_bit_exact_and_sized_as_fp32():
    received, trained = _states()
    update = ClientUpdate(1, trained, 10, 0.5, 2, {"tokens": 7}, {"control_delta": trained})
    message = pack_update(update, _sent(received))
    tensor_bytes = sum(t.numel() * 4 for t in trained.values())
    assert 2 * tensor_bytes < len(message) < 2 * tensor_bytes + 2048  # adapter + Δc + headers
    back = unpack_update(message, _sent(received))
    assert all(torch.equal(back.state[k], trained[k]) for k in trained)
    assert back.num_examples == 10 and back.metrics["tokens"] == 7
    assert torch.equal(back.extras["control_delta"][B_KEY], trained[B_KEY])


@pytest.mark.parametrize(
    ("compression", "ratio"), [("fp16", 0.5), ("int8", 0.25), ("int8_channel", 0.25)]
)
def test_compressed_upload_sends_a_small_delta(compression, ratio):
    received, trained = _states()
    update = ClientUpdate(1, trained, 10, 0.5, 2)
    message = pack_update(update, _sent(received, compression=compression))
    raw = len(pack_update(ClientUpdate(1, trained, 10, 0.5, 2), _sent(received)))
    assert len(message) < raw * ratio + 1024
    back = unpack_update(message, _sent(received, compression=compression))
    for key in trained:
        error = (back.state[key] - trained[key]).abs().max().item()
        assert 0 < error < 1e-3  # lossy, but only on the small delta (|Δ| ~ 0.03)
    assert update.metrics["compression_error"]["relative_error"] < 0.01


def test_ffa_lora_uploads_only_b():
    received, trained = _states()
    trained[A_KEY] = received[A_KEY].clone()
    full = pack_update(ClientUpdate(1, trained, 1, 0.0, 1), _sent(received))
    half = pack_update(ClientUpdate(1, trained, 1, 0.0, 1), _sent(received, trainable="lora_B"))
    assert len(half) < 0.55 * len(full)
    back = unpack_update(half, _sent(received, trainable="lora_B"))
    assert torch.equal(back.state[A_KEY], received[A_KEY])
    assert torch.equal(back.state[B_KEY], trained[B_KEY])


@pytest.mark.parametrize("compression", ["none", "int8"])
def test_fedsa_shares_only_a_and_the_server_fills_b_from_the_instruction(compression):
    received, trained = _states()  # the client trained both factors
    sent = _sent(received, shared="lora_A", compression=compression)
    message = pack_update(ClientUpdate(1, trained, 1, 0.0, 1), sent)
    _, parts = _split(message)
    assert set(parts["state"]) - {k for k in parts["state"] if k.startswith("__scale__.")} == {
        A_KEY
    }
    back = unpack_update(message, sent)
    assert torch.equal(back.state[B_KEY], received[B_KEY])  # B stays at the client
    assert not torch.equal(back.state[A_KEY], received[A_KEY])
    if compression == "none":
        assert torch.equal(back.state[A_KEY], trained[A_KEY])


def test_a_reply_must_send_what_the_instruction_shares():
    received, trained = _states()
    everything = pack_update(ClientUpdate(1, trained, 1, 0.0, 1), _sent(received))
    with pytest.raises(MalformedReplyError, match="sends 2 of 1 adapter keys"):
        unpack_update(everything, _sent(received, shared="lora_A"))
    nothing = pack_update(ClientUpdate(1, trained, 1, 0.0, 1), _sent(received, shared="none"))
    back = unpack_update(nothing, _sent(received, shared="none"))
    assert all(torch.equal(back.state[k], received[k]) for k in received)


def test_shared_names_is_trained_and_shared():
    state = dict.fromkeys([B_KEY, A_KEY], torch.zeros(1))
    config = FitConfig(lr=1e-3, rank=8, seed=0)
    cases = {
        ("all", "all"): [A_KEY, B_KEY],
        ("all", "lora_A"): [A_KEY],
        ("lora_B", "all"): [B_KEY],
        ("lora_B", "lora_A"): [],  # FFA-LoRA x FedSA: nothing is both trained and shared
        ("all", "none"): [],
    }
    for (trainable, shared), names in cases.items():
        assert shared_names(state, replace(config, trainable=trainable, shared=shared)) == names
    with pytest.raises(ValueError, match="shared: unknown value 'lora_C'"):
        shared_names(state, replace(config, shared="lora_C"))


def test_garbage_is_rejected():
    received, trained = _states()
    with pytest.raises(MalformedReplyError, match="client 1: malformed reply rejected"):
        unpack_update(b"not a message at all", _sent(received))
    message = pack_update(ClientUpdate(1, trained, 1, 0.0, 1), _sent(received))
    with pytest.raises(MessageError):
        unpack_update(message[:-10], _sent(received))


def _rewritten(message: bytes, **header) -> bytes:
    """``message`` with header keys replaced (None removes one), its parts re-encoded."""
    from fedit.communication import encode_state

    old, parts = _split(message)
    new = {k: v for k, v in {**old, **header}.items() if v is not None and k != "parts"}
    return _join(new, [(name, encode_state(state)) for name, state in parts.items()])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"rank": "8"}, r"key 'rank' is '8', expected int"),
        ({"lr": True}, r"key 'lr' is True, expected float"),
        ({"proximal_mu": None}, None),  # a missing key with a default is the default
        ({"lr": None}, r"lacks key 'lr'"),
        ({"lr_typo": 0.1}, r"unknown key 'lr_typo'"),
    ],
)
def test_instruction_config_is_checked_on_decode(change, reason):
    received, _ = _states()
    header = _sent(received).config.to_header()
    header.update(change)
    header = {k: v for k, v in header.items() if v is not None}
    message = _rewritten(pack_instruction(_sent(received)), config=header)
    if reason is None:
        assert unpack_instruction(message).config == _sent(received).config
        return
    with pytest.raises(MessageError, match=rf"client 1: instruction config .*{reason}"):
        unpack_instruction(message)


def test_a_misspelled_instruction_key_is_not_silently_a_default():
    received, _ = _states()
    message = _rewritten(pack_instruction(_sent(received)), extra_setting=1)
    with pytest.raises(MessageError, match="extra_setting"):
        unpack_instruction(message)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("nan", "has NaN or Inf"),
        ("shape", "has shape"),
        ("unknown_key", "adapter keys"),
        ("missing_key", "adapter keys"),
        ("extras_shape", "extras.control_delta"),
        ("client", "claims client id 0"),
        ("header_type", "header num_examples"),
        ("header_missing", "header keys differ"),
        ("compression", "was not asked for"),
        ("loss", "train_loss is nan"),
        ("dtype", "stored as torch.float64"),
    ],
)
def test_malformed_replies_are_refused_naming_the_client(kind, reason):
    from safetensors.torch import save as save_safetensors

    from fedit.communication import PAYLOAD_FORMAT, PAYLOAD_VERSION

    received, trained = _states()
    update = ClientUpdate(1, dict(trained), 10, 0.5, 2, {}, {"control_delta": dict(trained)})
    header: dict = {}
    if kind == "nan":
        update.state[B_KEY] = update.state[B_KEY].clone().fill_(float("nan"))
    if kind == "shape":
        update.state[B_KEY] = torch.zeros(64, 3)
    if kind == "unknown_key":
        update.state["m.k_proj.lora_A.weight"] = torch.zeros(8, 64)
    if kind == "missing_key":
        del update.state[A_KEY]
    if kind == "extras_shape":
        update.extras["control_delta"][A_KEY] = torch.zeros(2, 2)
    header = {
        "client": {"client_id": 0},
        "header_type": {"num_examples": "10"},
        "header_missing": {"num_steps": None},
        "compression": {"compression": "fp16"},
        "loss": {"train_loss": float("nan")},
    }.get(kind, {})
    message = pack_update(update, _sent(received))
    if header:
        message = _rewritten(message, **header)
    if kind == "dtype":  # a payload whose tensors are not in its codec's dtype
        metadata = {"format": PAYLOAD_FORMAT, "version": PAYLOAD_VERSION, "compression": "none"}
        payload = save_safetensors({k: v.double() for k, v in trained.items()}, metadata=metadata)
        old, _ = _split(message)
        old.pop("parts")
        message = _join(old, [("state", payload)])
    with pytest.raises(
        MalformedReplyError, match=rf"client 1: malformed reply rejected: .*{reason}"
    ):
        unpack_update(message, _sent(received))
