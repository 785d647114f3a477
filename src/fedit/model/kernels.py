"""``train.kernels``: liger-kernel's fused RMSNorm, RoPE and SwiGLU on Llama-family models, on CUDA.

liger-kernel (the ``kernels`` extra, not in ``make install``: it needs triton, which has no CPU
build) swaps a model's RMSNorm, rotary embedding and SwiGLU MLP for Triton kernels that keep
fewer intermediate activations and launch fewer kernels. The numbers do not change beyond
rounding (``tests/model/test_kernels_cuda.py`` checks the loss within 1e-3).

- ``liger``: apply them, or fail with one line naming ``train.kernels`` when there is no CUDA
  GPU, no liger-kernel, or a model family liger does not cover here.
- ``auto``: apply them only where all three are there; otherwise nothing, silently.
- ``none``: never.

What is applied, and why not liger's fused linear cross-entropy: that kernel comes as a
replacement of the model's whole ``forward`` (``lce_forward``), which computes the loss itself
when it is given labels and otherwise returns the logits. fedit gives no labels: it asks for
logits only at the positions that predict a scored token, with a 2-D boolean ``logits_to_keep``
(``client/loss.token_loss_sum``), which liger's forward does not take (it slices with an int or
a 1-D index). Patching ``forward`` would therefore break fedit's masking and buy nothing, so the
patch is called with ``fused_linear_cross_entropy=False``; fedit's own loss already skips the
vocabulary projection at unscored positions.

liger patches the model instance (its norms and MLPs) and, for RoPE, the family's modeling
module: every model of that family in the process uses liger's RoPE afterwards. A fedit process
trains one base model, so that is harmless there; ``module_patches_undone`` restores the module
for tests and benchmarks that compare patched and unpatched models in one process.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
from collections.abc import Iterator
from typing import Any

import torch

from fedit.config import ConfigError

logger = logging.getLogger(__name__)

# model_type → (liger's patch function, the transformers module it patches, the names it swaps)
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "llama": (
        "apply_liger_kernel_to_llama",
        "transformers.models.llama.modeling_llama",
        ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"),
    ),
    "mistral": (
        "apply_liger_kernel_to_mistral",
        "transformers.models.mistral.modeling_mistral",
        ("apply_rotary_pos_emb", "MistralRMSNorm", "MistralMLP"),
    ),
    "qwen2": (
        "apply_liger_kernel_to_qwen2",
        "transformers.models.qwen2.modeling_qwen2",
        ("apply_rotary_pos_emb", "Qwen2RMSNorm", "Qwen2MLP"),
    ),
}


def liger_installed() -> bool:
    """Whether liger-kernel can be imported (without importing it: that pulls in triton)."""
    return importlib.util.find_spec("liger_kernel") is not None


def _device_of(device_setting: str) -> torch.device:
    """What ``model.device`` resolves to, as ``model.loading`` resolves it."""
    if device_setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device_setting)


def kernels_wanted(setting: str, device_setting: str) -> bool:
    """Whether ``train.kernels`` applies liger on this machine; checked before the model loads.

    Args:
        setting: ``train.kernels`` (auto, liger or none).
        device_setting: ``model.device`` (cpu, cuda or auto).

    Raises:
        ConfigError: ``liger`` without a CUDA GPU or without liger-kernel installed.
    """
    if setting == "none":
        return False
    problem = None
    if _device_of(device_setting).type != "cuda" or not torch.cuda.is_available():
        problem = "needs a CUDA GPU (model.device resolves to cpu here)"
    elif not liger_installed():
        problem = "needs liger-kernel; install it with `pip install 'fedit[kernels]'`"
    if problem is None:
        return True
    if setting == "liger":
        raise ConfigError(f"train.kernels: liger {problem}; use train.kernels=auto or none")
    return False


def _family(model: Any) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def apply_kernels(model: Any, setting: str, device_setting: str) -> bool:
    """Patch the base model in place as ``train.kernels`` says (before LoRA is applied).

    Args:
        model: The base causal LM from ``load_model``.
        setting: ``train.kernels``.
        device_setting: ``model.device``.

    Returns:
        Whether liger's kernels were applied.

    Raises:
        ConfigError: ``liger`` where it cannot run (``kernels_wanted``), or on a model family
            that liger does not cover here.
    """
    if not kernels_wanted(setting, device_setting):
        return False
    family = _family(model)
    if family not in FAMILIES:
        if setting == "liger":
            raise ConfigError(
                f"train.kernels: liger covers model types {', '.join(FAMILIES)}; this model is "
                f"{family!r}; use train.kernels=auto or none"
            )
        return False
    function_name, _, _ = FAMILIES[family]
    liger = importlib.import_module("liger_kernel.transformers")
    getattr(liger, function_name)(
        rope=True,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=False,  # see the module docstring
        model=model,
    )
    logger.info("train.kernels: liger's RMSNorm, RoPE and SwiGLU on this %s model", family)
    return True


@contextlib.contextmanager
def module_patches_undone(family: str = "llama") -> Iterator[None]:
    """Restore what liger swaps in the family's modeling module when the block ends.

    The patched model instance keeps its kernels; models built afterwards are plain again.
    """
    _, module_name, names = FAMILIES[family]
    module = importlib.import_module(module_name)
    saved = {name: getattr(module, name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)
