"""Adapter states as bytes: exact safetensors payloads and lossy upload compression."""

from __future__ import annotations

import json
import math

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from fedit.config import COMPRESSIONS
from fedit.types import AdapterState

__all__ = ["COMPRESSIONS", "decode_state", "encode_state", "reconstruction_error"]
PAYLOAD_FORMAT = "fedit-adapter"
PAYLOAD_VERSION = "1"
# Quantisation scales travel beside their tensor under this prefix; adapter keys never start
# with "__" (they are peft module paths).
SCALE_PREFIX = "__scale__."
_CASTS = {"fp16": torch.float16, "bf16": torch.bfloat16}
# The dtype each codec stores its tensors in (int8 scales are fp32); anything else is refused.
_STORED_DTYPES = {"none": torch.float32, **_CASTS, "int8": torch.int8, "int8_channel": torch.int8}
_INT8_MAX = 127


def _int8_scale(values: Tensor, per_channel: bool) -> Tensor:
    """Symmetric scale max|x| / 127, per tensor () or per output row (d0, 1, ..., 1)."""
    if values.numel() == 0:
        return torch.ones(())
    if per_channel and values.ndim >= 1:
        reduce = tuple(range(1, values.ndim))
        amax = values.abs().amax(dim=reduce, keepdim=True) if reduce else values.abs()
    else:
        amax = values.abs().max()
    scale = amax / _INT8_MAX
    # An all-zero tensor or row quantises to zeros with any scale; 1 avoids dividing by zero.
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _encode_tensor(name: str, values: Tensor, compression: str) -> dict[str, Tensor]:
    """The safetensors entries for one fp32 tensor under ``compression``."""
    if compression == "none":
        return {name: values}
    if compression in _CASTS:
        fp16_max = torch.finfo(torch.float16).max
        if compression == "fp16" and values.numel() and values.abs().max() > fp16_max:
            raise ValueError(f"{name}: values exceed the fp16 range; use bf16 or int8")
        return {name: values.to(_CASTS[compression])}
    if not torch.isfinite(values).all():
        raise ValueError(f"{name}: cannot quantise NaN or Inf to int8")
    scale = _int8_scale(values, per_channel=compression == "int8_channel")
    quantised = torch.round(values / scale).clamp(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return {name: quantised, SCALE_PREFIX + name: scale.contiguous()}


def encode_state(state: AdapterState, compression: str = "none") -> bytes:
    """Serialise an adapter state as a safetensors payload, optionally compressed.

    ``none`` stores fp32 (decoding is bit-exact for fp32 input); ``fp16``/``bf16`` cast;
    ``int8`` and ``int8_channel`` quantise symmetrically, q = round(x / s) clamped to ±127 with
    s = max|x| / 127 per tensor or per output row (dim 0), and store q as int8 plus s as fp32.
    The compression is recorded in the payload's metadata, so ``decode_state`` needs nothing
    else. Engines count ``len()`` of the result as the bytes on the wire.

    Args:
        state: tensors keyed by parameter name (any float dtype or device).
        compression: one of ``COMPRESSIONS``.

    Returns:
        The payload bytes.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    tensors: dict[str, Tensor] = {}
    for name, tensor in state.items():
        if name.startswith(SCALE_PREFIX):
            raise ValueError(f"{name}: parameter names may not start with {SCALE_PREFIX!r}")
        values = tensor.detach().to("cpu", torch.float32).contiguous()
        tensors.update(_encode_tensor(name, values, compression))
    metadata = {
        "format": PAYLOAD_FORMAT,
        "version": PAYLOAD_VERSION,
        "compression": compression,
    }
    return save_safetensors(tensors, metadata=metadata)


def _read_metadata(payload: bytes) -> dict[str, str]:
    """The safetensors header's metadata: 8-byte little-endian length, then JSON."""
    not_ours = "not a fedit adapter payload"
    if not isinstance(payload, (bytes, bytearray, memoryview)) or len(payload) < 8:
        raise ValueError(f"{not_ours}: too short")
    header_length = int.from_bytes(bytes(payload[:8]), "little")
    if header_length > len(payload) - 8:
        raise ValueError(f"{not_ours}: header length {header_length} exceeds the payload")
    try:
        header = json.loads(bytes(payload[8 : 8 + header_length]))
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{not_ours}: unreadable header") from error
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != PAYLOAD_FORMAT:
        raise ValueError(f"{not_ours}: no {PAYLOAD_FORMAT!r} metadata")
    if metadata.get("compression") not in COMPRESSIONS:
        raise ValueError(f"unknown compression {metadata.get('compression')!r} in payload")
    return metadata


def decode_state(payload: bytes) -> AdapterState:
    """Rebuild the fp32 adapter state from an ``encode_state`` payload.

    Raises:
        ValueError: the bytes are not a fedit payload, a tensor is not stored in its codec's
            dtype, or a quantised tensor lacks its scale.
    """
    compression = _read_metadata(payload)["compression"]
    try:
        tensors = load_safetensors(bytes(payload))
    except Exception as error:  # safetensors raises its own error type for corrupt bodies
        raise ValueError(f"corrupt fedit adapter payload: {error}") from error
    state: AdapterState = {}
    for name, tensor in tensors.items():
        stored = torch.float32 if name.startswith(SCALE_PREFIX) else _STORED_DTYPES[compression]
        if tensor.dtype != stored:
            raise ValueError(f"{name}: stored as {tensor.dtype}, {compression} stores {stored}")
        if name.startswith(SCALE_PREFIX):
            continue
        if compression.startswith("int8"):
            scale = tensors.get(SCALE_PREFIX + name)
            if scale is None:
                raise ValueError(f"{name}: int8 tensor without its scale in payload")
            state[name] = tensor.float() * scale
        else:
            state[name] = tensor.float()
    return state


def reconstruction_error(original: AdapterState, decoded: AdapterState) -> dict[str, float]:
    """How far ``decoded`` is from ``original``, over all tensors together.

    Returns:
        ``max_abs_error`` = max |x − x̂| and ``relative_error`` = ‖x − x̂‖_F / ‖x‖_F (0 when
        ‖x‖_F = 0 and the two are equal), both over every element of every tensor.
    """
    if set(original) != set(decoded):
        raise ValueError("original and decoded states have different keys")
    max_abs = squared_diff = squared_norm = 0.0
    for name, tensor in original.items():
        x = tensor.detach().to("cpu", torch.float64)
        diff = decoded[name].detach().to("cpu", torch.float64) - x
        if diff.numel():
            max_abs = max(max_abs, float(diff.abs().max()))
        squared_diff += float((diff**2).sum())
        squared_norm += float((x**2).sum())
    if squared_norm > 0:
        relative = math.sqrt(squared_diff / squared_norm)
    else:
        relative = 0.0 if squared_diff == 0 else math.inf
    return {"max_abs_error": max_abs, "relative_error": relative}
