"""Where a model runs: its input device, the autocast dtype to train in, and its padding id."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from fedit.config import ConfigError
from fedit.model import precision
from fedit.model.precision import cpu_supports_bf16  # noqa: F401 - re-exported

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def resolve_autocast(device: torch.device, mode: str) -> torch.dtype | None:
    """The autocast dtype for ``train.autocast`` on ``device`` (None = full precision).

    ``auto`` picks bf16 on a CUDA GPU that supports it and on a CPU with native bf16; otherwise
    fp32, because emulated bf16 is slower than fp32.
    """
    if mode == "auto":  # the one detector, shared with model.dtype=auto
        return torch.bfloat16 if precision.native_bf16(device) else None
    if mode not in AUTOCAST_DTYPES:
        raise ConfigError(f"train.autocast: unknown value {mode!r}; choose auto, bf16, fp16, none")
    return AUTOCAST_DTYPES[mode]


def autocast_context(device: torch.device, mode: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``mode`` on ``device``, or a no-op when it resolves to none."""
    dtype = resolve_autocast(device, mode)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's inputs go: the device of its input embeddings."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    if get_embeddings is not None and get_embeddings() is not None:
        return get_embeddings().weight.device
    return next(model.parameters()).device


def model_pad_token_id(model: nn.Module) -> int:
    """The id used to pad batches: the config's pad token, else its EOS, else 0."""
    pad = getattr(model.config, "pad_token_id", None)
    if pad is None:
        pad = getattr(model.config, "eos_token_id", None)
    if isinstance(pad, list):
        pad = pad[0]
    # Padding positions are masked out of attention and labels, so any valid id works.
    return int(pad) if pad is not None else 0
