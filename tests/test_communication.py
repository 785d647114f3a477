"""Payload round trips: exact without compression, bounded error and smaller bytes with it."""

import json

import pytest
import torch

from fedit.communication import (
    COMPRESSIONS,
    decode_state,
    encode_state,
    reconstruction_error,
)

A_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        A_KEY: torch.randn(8, 64, generator=generator),  # (r, d_in)
        B_KEY: torch.randn(64, 8, generator=generator) * 1e-2,  # (d_out, r)
    }


def test_none_is_bit_exact(state):
    decoded = decode_state(encode_state(state))
    assert set(decoded) == set(state)
    for name, tensor in state.items():
        assert decoded[name].dtype == torch.float32
        assert torch.equal(decoded[name], tensor)
    assert reconstruction_error(state, decoded) == {"max_abs_error": 0.0, "relative_error": 0.0}


@pytest.mark.parametrize(
    ("compression", "dtype", "unit_roundoff"),
    [("fp16", torch.float16, 2**-11), ("bf16", torch.bfloat16, 2**-8)],
)
def test_float_casts_are_within_half_an_ulp(state, compression, dtype, unit_roundoff):
    decoded = decode_state(encode_state(state, compression))
    smallest_normal = torch.finfo(dtype).tiny  # fp16: 2^-14, bf16: 2^-126
    for name, tensor in state.items():
        error = (decoded[name] - tensor).abs()
        normal = tensor.abs() >= smallest_normal
        # normal numbers of the target format: relative error <= u
        assert (error[normal] / tensor[normal].abs()).max() <= unit_roundoff
        assert error.max() > 0  # the cast did happen
        # fp16 subnormals (some B entries ~1e-5) are spaced 2^-24 apart: absolute error <= 2^-25
        assert torch.all(error[~normal] <= 2**-25)
    assert reconstruction_error(state, decoded)["relative_error"] <= unit_roundoff


def test_fp16_overflow_is_an_error_not_inf():
    with pytest.raises(ValueError, match="fp16 range"):
        encode_state({"w": torch.tensor([1e6])}, "fp16")


def test_int8_error_is_at_most_half_a_step():
    x = torch.tensor([[-2.54, 0.0, 1.0, 2.54]])
    decoded = decode_state(encode_state({"w": x}, "int8"))["w"]
    # scale = 2.54 / 127 = 0.02: 1.0 / 0.02 = 50 steps exactly, ±2.54 = ±127 steps
    torch.testing.assert_close(decoded, x)
    generator = torch.Generator().manual_seed(1)
    y = torch.randn(16, 32, generator=generator)
    scale = y.abs().max() / 127
    error = (decode_state(encode_state({"w": y}, "int8"))["w"] - y).abs()
    assert error.max() <= scale / 2 + 1e-7
    assert error.max() > scale / 4  # it really is quantised


def test_int8_channel_error_per_row_and_beats_per_tensor():
    # rows of very different magnitude: one scale for all would flatten the small rows
    magnitudes = torch.tensor([[1e-3], [1.0], [100.0]])
    x = torch.randn(3, 50, generator=torch.Generator().manual_seed(2)) * magnitudes
    channel = decode_state(encode_state({"w": x}, "int8_channel"))["w"]
    tensor = decode_state(encode_state({"w": x}, "int8"))["w"]
    row_scales = x.abs().amax(dim=1, keepdim=True) / 127  # (3, 1)
    assert torch.all((channel - x).abs() <= row_scales / 2 + 1e-7)
    per_channel = reconstruction_error({"w": x}, {"w": channel})
    per_tensor = reconstruction_error({"w": x}, {"w": tensor})
    assert per_channel["relative_error"] <= per_tensor["relative_error"]
    assert per_channel["max_abs_error"] <= per_tensor["max_abs_error"]
    # the 1e-3 row is all zeros per tensor (scale ≈ 100/127) but kept per channel
    assert torch.all(tensor[0] == 0) and torch.all(channel[0] != 0)


def test_int8_all_zero_tensor_and_row():
    x = torch.zeros(2, 3)
    x[1] = torch.tensor([1.0, -2.0, 0.5])
    for compression in ("int8", "int8_channel"):
        decoded = decode_state(encode_state({"w": x, "z": torch.zeros(4)}, compression))
        assert torch.all(decoded["z"] == 0) and torch.isfinite(decoded["w"]).all()
        assert torch.all(decoded["w"][0] == 0)


def test_payload_sizes():
    generator = torch.Generator().manual_seed(3)
    # one rank-16 module with d = 512: 16,384 values, large enough that the header is noise
    big = {A_KEY: torch.randn(16, 512, generator=generator), B_KEY: torch.randn(512, 16)}
    sizes = {c: len(encode_state(big, c)) for c in COMPRESSIONS}
    fp32_bytes = 2 * 16 * 512 * 4
    assert fp32_bytes < sizes["none"] <= fp32_bytes + 1024  # plus the JSON header
    assert sizes["fp16"] == pytest.approx(sizes["none"] / 2, rel=0.05)
    assert sizes["bf16"] == pytest.approx(sizes["fp16"], abs=16)  # "BF16" vs "F16" in the header
    assert sizes["int8"] == pytest.approx(sizes["none"] / 4, rel=0.05)
    # one fp32 scale per output row on top of the int8 values: 16 rows of A + 512 rows of B
    assert sizes["int8_channel"] - sizes["int8"] == pytest.approx((16 + 512 - 2) * 4, abs=200)


def test_compression_is_recorded_and_checked(state):
    payload = encode_state(state, "bf16")
    header_length = int.from_bytes(payload[:8], "little")
    metadata = json.loads(payload[8 : 8 + header_length])["__metadata__"]
    assert metadata["compression"] == "bf16" and metadata["format"] == "fedit-adapter"
    with pytest.raises(ValueError, match="compression must be one of"):
        encode_state(state, "int4")


@pytest.mark.parametrize(
    "garbage",
    [b"", b"hello", b"\xff" * 64, (10).to_bytes(8, "little") + b'{"a": 1}xx'],
)
def test_decode_garbage_raises_value_error(garbage):
    with pytest.raises(ValueError, match="fedit"):
        decode_state(garbage)


def test_decode_rejects_foreign_safetensors_and_truncated_payloads(state):
    from safetensors.torch import save

    with pytest.raises(ValueError, match="not a fedit"):
        decode_state(save({"w": torch.zeros(2)}))
    with pytest.raises(ValueError, match="fedit"):
        decode_state(encode_state(state)[:-100])
