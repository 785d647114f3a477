"""Which floating-point formats a device runs natively, and the base model's weight dtype.

One detector serves both precision choices: ``model.dtype=auto`` (the frozen base's weights) and
``train.autocast=auto`` (``client/device.resolve_autocast``). bf16 is chosen only where it is
native: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX. On an AVX2-only CPU bf16
matmuls are emulated and far slower than fp32, so ``auto`` stays in fp32 there.

A bf16 base keeps the LoRA parameters in fp32 (peft upcasts adapter weights of a half-precision
base, ``autocast_adapter_dtype``), so AdamW's moments are fp32 too.
"""

from __future__ import annotations

import contextlib
import logging
from functools import cache
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
# /proc/cpuinfo flags of native bf16 arithmetic (AVX512-BF16 dot products, AMX tiles).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_flags() -> set[str]:
    """The CPU feature flags the kernel reports (empty where there is no /proc/cpuinfo)."""
    with contextlib.suppress(OSError):
        for line in CPUINFO.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    return set()


@cache
def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX), not emulated.

    Asks torch's own CPU probes first (what oneDNN will use), then the kernel's flags.
    """
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, name, None)
        with contextlib.suppress(Exception):
            if check is not None and check():
                return True
    return bool(_cpuinfo_flags() & BF16_CPU_FLAGS)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: a bf16 CUDA GPU or a bf16 CPU."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_supports_bf16()


def bf16_support_line(device: torch.device) -> str:
    """One line naming the device's bf16 support, for logs and benchmark reports."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "cuda"
        return f"{name}: {'native bf16' if native_bf16(device) else 'no native bf16'}"
    capability = torch.backends.cpu.get_cpu_capability()
    flags = sorted(_cpuinfo_flags() & BF16_CPU_FLAGS)
    native = "native bf16" if cpu_supports_bf16() else "no native bf16 (emulated, fp32 chosen)"
    return f"CPU ({capability}{', ' + ', '.join(flags) if flags else ''}): {native}"


def resolve_model_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype of ``model.dtype`` on ``device``: ``auto`` is bf16 where native, else fp32.

    Raises:
        ValueError: An unknown name (the config validation refuses it first).
    """
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if name not in TORCH_DTYPES:
        raise ValueError(f"model.dtype: unknown value {name!r}; choose auto, fp32, bf16, fp16")
    return TORCH_DTYPES[name]
