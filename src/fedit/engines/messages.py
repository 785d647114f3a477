"""Instructions and updates as bytes: the one wire format of both engines.

A message is ``[8-byte header length][JSON header][part][part]...``. The header holds the
scalars and lists the parts; each part is one safetensors payload (an adapter, or a strategy
side-channel such as SCAFFOLD's control variates) with its own compression. The in-process
engine and the Flower engine send exactly these bytes, so the byte counts in metrics.jsonl are
the serialised sizes in both, and upload compression really loses what it loses.

Uploads carry only the keys the client trained and shares (``types.shared_names``; FFA-LoRA:
B only, FedSA-LoRA: A only), and the server fills the others from the instruction, so a
strategy always sees whole adapters. Without compression they
carry the adapter itself (bit-exact); with lossy compression they carry the change from the
adapter the client received, which quantises far better than the weights themselves.

Decoding checks before anything is built: an instruction's ``FitConfig`` (unknown, missing or
ill-typed keys), and a reply's header, names, shapes and finiteness against the instruction it
answers, so a malformed reply is refused by name in either engine.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import torch

from fedit.communication import decode_state, encode_state, reconstruction_error
from fedit.types import (
    AdapterState,
    ClientUpdate,
    FitConfig,
    FitConfigError,
    FitInstruction,
    shared_names,
)

_LENGTH = struct.Struct("<Q")
STATE_PART = "state"
EXTRAS_PREFIX = "extras."
_INSTRUCTION_KEYS = {"client_id", "config", "parts"}
# Header key of a reply -> the JSON types it may have.
_UPDATE_TYPES: dict[str, tuple[type, ...]] = {
    "client_id": (int,),
    "num_examples": (int,),
    "train_loss": (int, float),
    "num_steps": (int,),
    "metrics": (dict,),
    "compression": (str,),
    "parts": (list,),
}


class MessageError(ValueError):
    """A message that cannot be decoded."""


class MalformedReplyError(MessageError):
    """A client's reply that cannot be aggregated; the message names the client."""


def _join(header: dict[str, Any], parts: list[tuple[str, bytes]]) -> bytes:
    """Header plus one encoded payload per (name, payload) part."""
    header = {**header, "parts": [[name, len(payload)] for name, payload in parts]}
    head = json.dumps(header, sort_keys=True).encode("utf-8")
    return b"".join([_LENGTH.pack(len(head)), head, *(payload for _, payload in parts)])


def _split(message: bytes) -> tuple[dict[str, Any], dict[str, AdapterState]]:
    """The header and each named part, decoded to fp32 tensors."""
    try:
        (length,) = _LENGTH.unpack_from(message)
        header = json.loads(message[_LENGTH.size : _LENGTH.size + length])
        if not isinstance(header, dict):
            raise TypeError("header is not a JSON object")
        offset = _LENGTH.size + length
        parts: dict[str, AdapterState] = {}
        for name, size in header["parts"]:
            if name != STATE_PART and not str(name).startswith(EXTRAS_PREFIX):
                raise ValueError(f"unknown part {name!r}")
            parts[name] = decode_state(message[offset : offset + size])
            offset += size
    except (struct.error, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise MessageError(f"cannot decode message: {err}") from None
    if offset != len(message):
        raise MessageError(f"message has {len(message) - offset} trailing bytes")
    if STATE_PART not in parts:
        raise MessageError("message has no state part")
    return header, parts


def _extras(parts: dict[str, AdapterState]) -> dict[str, AdapterState]:
    return {name.removeprefix(EXTRAS_PREFIX): t for name, t in parts.items() if name != STATE_PART}


def _extra_parts(extras: dict[str, AdapterState]) -> list[tuple[str, bytes]]:
    """Strategy side-channels (SCAFFOLD's variates) travel uncompressed."""
    return [(f"{EXTRAS_PREFIX}{name}", encode_state(extra)) for name, extra in extras.items()]


def pack_instruction(instruction: FitInstruction) -> bytes:
    """Serialise what the server sends one client (downloads are never compressed)."""
    header = {"client_id": instruction.client_id, "config": instruction.config.to_header()}
    parts = [(STATE_PART, encode_state(instruction.state)), *_extra_parts(instruction.extras)]
    return _join(header, parts)


def unpack_instruction(message: bytes) -> FitInstruction:
    """The inverse of ``pack_instruction``.

    Raises:
        MessageError: undecodable bytes, or a header with unknown, missing or ill-typed keys
            (naming the key and the client).
    """
    header, parts = _split(message)
    client_id = header.get("client_id")
    if set(header) != _INSTRUCTION_KEYS or not isinstance(client_id, int):
        raise MessageError(f"instruction header has keys {sorted(header)}")
    try:
        config = FitConfig.from_header(header["config"], client_id)
    except FitConfigError as err:
        raise MessageError(str(err)) from None
    return FitInstruction(client_id, parts[STATE_PART], config, _extras(parts))


def _encode_upload(update: ClientUpdate, instruction: FitInstruction) -> bytes:
    """The adapter part of a reply, encoded as the instruction's config says.

    A lossy compression's reconstruction error is recorded in ``update.metrics``.
    """
    config, received = instruction.config, instruction.state
    keys = shared_names(update.state, config)
    if config.compression == "none":
        payload = {name: update.state[name] for name in keys}
    else:
        payload = {name: update.state[name] - received[name] for name in keys}
    encoded = encode_state(payload, config.compression)
    if config.compression != "none" and config.dp_level == "none":  # data-dependent under DP
        update.metrics["compression_error"] = reconstruction_error(payload, decode_state(encoded))
    return encoded


def pack_update(update: ClientUpdate, instruction: FitInstruction) -> bytes:
    """Serialise a client's reply to ``instruction``, compressed as its config says."""
    header = {
        "client_id": update.client_id,
        "num_examples": update.num_examples,
        "train_loss": update.train_loss,
        "num_steps": update.num_steps,
        "metrics": update.metrics,
        "compression": instruction.config.compression,
    }
    parts = [(STATE_PART, _encode_upload(update, instruction)), *_extra_parts(update.extras)]
    return _join(header, parts)


def _check_tensors(what: str, tensors: AdapterState, received: AdapterState) -> None:
    """Every tensor is a known adapter key, shaped as received, and finite."""
    for name, tensor in tensors.items():
        if name not in received:
            raise ValueError(f"{what}: unknown adapter key {name}")
        if tensor.shape != received[name].shape:
            raise ValueError(
                f"{what}: {name} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(received[name].shape)}"
            )
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{what}: {name} has NaN or Inf")


def _check_update_header(header: dict[str, Any], instruction: FitInstruction) -> None:
    if set(header) != set(_UPDATE_TYPES):
        unknown = sorted(set(header) - set(_UPDATE_TYPES))
        raise ValueError(
            f"header keys differ (missing {sorted(set(_UPDATE_TYPES) - set(header))}"
            f", unknown {unknown})"
        )
    for key, types in _UPDATE_TYPES.items():
        if not isinstance(header[key], types) or isinstance(header[key], bool):
            raise ValueError(f"header {key} is {header[key]!r}")
    if header["client_id"] != instruction.client_id:
        raise ValueError(f"reply claims client id {header['client_id']!r}")
    if header["compression"] != instruction.config.compression:
        raise ValueError(f"compression {header['compression']!r} was not asked for")
    if header["num_examples"] < 0 or header["num_steps"] < 0:
        raise ValueError("negative num_examples or num_steps")
    if not math.isfinite(header["train_loss"]):
        raise ValueError(f"train_loss is {header['train_loss']}")


def unpack_update(message: bytes, instruction: FitInstruction) -> ClientUpdate:
    """Decode and check the reply to ``instruction``; keys not sent keep the value it carried.

    Uncompressed uploads carry the trained tensors, compressed ones the change from the
    instruction's adapter.

    Raises:
        MalformedReplyError: undecodable bytes, a header with missing, unknown or ill-typed
            keys, another client id or compression, or tensors with unknown names, wrong
            shapes or non-finite values; the message names the client.
    """
    received = instruction.state
    try:
        header, parts = _split(message)
        _check_update_header(header, instruction)
        payload = parts[STATE_PART]
        expected = set(shared_names(received, instruction.config))
        if set(payload) != expected:
            raise ValueError(f"state sends {len(payload)} of {len(expected)} adapter keys")
        compressed = header["compression"] != "none"
        state = dict(received)
        for name, value in payload.items():
            state[name] = received[name] + value if compressed else value
        _check_tensors("state", state, received)
        extras = _extras(parts)
        for name, extra in extras.items():
            _check_tensors(f"extras.{name}", extra, received)
    except (MessageError, ValueError, KeyError, TypeError) as err:
        raise MalformedReplyError(
            f"client {instruction.client_id}: malformed reply rejected: {err}"
        ) from None
    return ClientUpdate(
        client_id=instruction.client_id,
        state=state,
        num_examples=header["num_examples"],
        train_loss=float(header["train_loss"]),
        num_steps=header["num_steps"],
        metrics=header["metrics"],
        extras=extras,
    )
