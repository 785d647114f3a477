"""Instructions and updates as bytes: what would cross the network, so it can be counted.

A message is ``[8-byte header length][JSON header][part][part]...``. The header holds the
scalars and lists the parts; each part is one safetensors payload (an adapter, or a strategy
side-channel such as SCAFFOLD's control variates) with its own compression. The in-process
engine sends every instruction and update through here, so the byte counts in metrics.jsonl
are the exact serialised sizes and upload compression really loses what it loses.

Uploads carry only the keys the client trained (FFA-LoRA: B only). Without compression they
carry the adapter itself (bit-exact); with lossy compression they carry the change from the
adapter the client received, which quantises far better than the weights themselves.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from fedit.communication import decode_state, encode_state, reconstruction_error
from fedit.types import AdapterState, ClientUpdate, FitInstruction

_LENGTH = struct.Struct("<Q")


class MessageError(ValueError):
    """A message that cannot be decoded."""


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
        offset = _LENGTH.size + length
        parts: dict[str, AdapterState] = {}
        for name, size in header["parts"]:
            parts[name] = decode_state(message[offset : offset + size])
            offset += size
    except (struct.error, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise MessageError(f"cannot decode message: {err}") from None
    if offset != len(message):
        raise MessageError(f"message has {len(message) - offset} trailing bytes")
    return header, parts


def _extras(parts: dict[str, AdapterState]) -> dict[str, AdapterState]:
    return {name.removeprefix("extras."): t for name, t in parts.items() if name != "state"}


def pack_instruction(instruction: FitInstruction) -> bytes:
    """Serialise what the server sends one client (downloads are never compressed)."""
    header = {"client_id": instruction.client_id, "config": instruction.config}
    parts = [("state", encode_state(instruction.state))]
    parts += [(f"extras.{name}", encode_state(extra)) for name, extra in instruction.extras.items()]
    return _join(header, parts)


def unpack_instruction(message: bytes) -> FitInstruction:
    """The inverse of ``pack_instruction``."""
    header, parts = _split(message)
    return FitInstruction(header["client_id"], parts["state"], header["config"], _extras(parts))


def uploaded_keys(state: AdapterState, trainable: str) -> list[str]:
    """The adapter keys a client sends back: all of them, or only B for FFA-LoRA."""
    if trainable == "lora_B":
        return [name for name in state if ".lora_B." in name]
    return list(state)


def encode_upload(
    update: ClientUpdate, received: AdapterState, config: dict[str, Any]
) -> tuple[bytes, str]:
    """The adapter part of a reply, encoded as ``config`` says; returns (payload, compression).

    Both engines call this, so in-process and Flower uploads are the same bytes. A lossy
    compression's reconstruction error is recorded in ``update.metrics``.
    """
    compression = str(config.get("compression", "none"))
    keys = uploaded_keys(update.state, str(config.get("trainable", "all")))
    if compression == "none":
        payload = {name: update.state[name] for name in keys}
    else:
        payload = {name: update.state[name] - received[name] for name in keys}
    encoded = encode_state(payload, compression)
    if compression != "none":
        update.metrics["compression_error"] = reconstruction_error(payload, decode_state(encoded))
    return encoded, compression


def update_header(update: ClientUpdate, compression: str) -> dict[str, Any]:
    """A reply's scalars, as both engines send them."""
    return {
        "client_id": update.client_id,
        "num_examples": update.num_examples,
        "train_loss": update.train_loss,
        "num_steps": update.num_steps,
        "metrics": update.metrics,
        "compression": compression,
    }


def merge_upload(received: AdapterState, payload: AdapterState, compression: str) -> AdapterState:
    """The client's adapter from its upload: uncompressed uploads carry the trained tensors,
    compressed ones the change from ``received``; keys not sent keep their received value.

    Raises:
        ValueError: The upload has a key the received adapter does not.
    """
    state = dict(received)
    for name, value in payload.items():
        if name not in state:
            raise ValueError(f"unknown adapter key {name}")
        state[name] = value if compression == "none" else state[name] + value
    return state


def pack_update(update: ClientUpdate, received: AdapterState, config: dict[str, Any]) -> bytes:
    """Serialise a client's reply, compressed as ``config["compression"]`` says."""
    encoded, compression = encode_upload(update, received, config)
    parts = [("state", encoded)]
    # Strategy side-channels (SCAFFOLD's Δc) travel uncompressed.
    parts += [(f"extras.{name}", encode_state(extra)) for name, extra in update.extras.items()]
    return _join(update_header(update, compression), parts)


def unpack_update(message: bytes, received: AdapterState) -> ClientUpdate:
    """The inverse of ``pack_update``: keys not sent keep the value the client received."""
    header, parts = _split(message)
    return ClientUpdate(
        client_id=header["client_id"],
        state=merge_upload(received, parts["state"], header["compression"]),
        num_examples=header["num_examples"],
        train_loss=header["train_loss"],
        num_steps=header["num_steps"],
        metrics=header["metrics"],
        extras=_extras(parts),
    )
