"""Where a model runs: its input device, the autocast dtype to train in, and its padding id."""

from __future__ import annotations

import contextlib
from functools import cache

import torch
from torch import nn

from fedit.config import ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


@cache
def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX), not emulated."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in checks:
        check = getattr(torch.cpu, name, None)
        with contextlib.suppress(Exception):
            if check is not None and check():
                return True
    return False


def resolve_autocast(device: torch.device, mode: str) -> torch.dtype | None:
    """The autocast dtype for ``train.autocast`` on ``device`` (None = full precision).

    ``auto`` picks bf16 on a CUDA GPU that supports it and on a CPU with native bf16; otherwise
    fp32, because emulated bf16 is slower than fp32.
    """
    if mode == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if device.type == "cpu" and cpu_supports_bf16() else None
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
