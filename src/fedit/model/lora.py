"""Apply LoRA (peft) to a base model and move adapter weights in and out: the exchange format.

Clients and the server only ever exchange ``AdapterState``: peft's own state-dict keys (no adapter
name inside), CPU, fp32. ``save_adapter`` writes the same tensors as a standard PEFT folder that
``PeftModel.from_pretrained(base, path)`` loads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import peft
import torch
from peft import PeftModel, TaskType, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from fedit.config import LoraConfig
from fedit.io import atomic_directory
from fedit.types import AdapterState

if TYPE_CHECKING:
    from torch.nn.modules.module import _IncompatibleKeys

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def _is_quantized(model: nn.Module) -> bool:
    return bool(
        getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    )


def apply_lora(model: nn.Module, cfg: LoraConfig, seed: int | None = None) -> PeftModel:
    """Wrap ``model`` with a fresh LoRA adapter; base weights are frozen.

    LoRA B starts at zero, so the wrapped model computes exactly what the base model did. A is
    drawn from torch's RNG: the init is deterministic given the global seed, or given ``seed``
    (which uses a forked RNG and leaves the global one untouched).

    A bitsandbytes-quantized model first goes through peft's ``prepare_model_for_kbit_training``
    (norms to fp32, input grads on); gradient checkpointing stays governed by
    ``train.gradient_checkpointing``.

    Args:
        model: A causal LM from ``fedit.model.loading.load_model``.
        cfg: The ``lora`` section of the config.
        seed: Optional seed for the adapter init.

    Returns:
        The peft model (it shares the base model's modules; ``model`` is modified in place).
    """
    if _is_quantized(model):
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    peft_config = peft.LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        bias="none",
    )
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        peft_model = peft.get_peft_model(model, peft_config)
    trainable, total = count_parameters(peft_model)
    logger.info(
        "LoRA r=%d alpha=%d on %s: %s trainable of %s parameters (%.3f%%)",
        cfg.r,
        cfg.alpha,
        cfg.target_modules,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / max(total, 1),
    )
    return peft_model


def get_adapter_state(model: PeftModel) -> AdapterState:
    """The active adapter's weights as detached fp32 CPU copies, keyed by peft's names."""
    state = get_peft_model_state_dict(model, adapter_name=model.active_adapter)
    return {key: value.detach().to("cpu", torch.float32).clone() for key, value in state.items()}


def adapter_parameters(model: PeftModel) -> dict[str, nn.Parameter]:
    """The active adapter's trainable parameters, keyed like ``get_adapter_state``.

    peft names a parameter ``...q_proj.lora_A.<adapter>.weight`` and its state-dict entry
    ``...q_proj.lora_A.weight``; this maps the second onto the first's tensor.
    """
    marker = f".{model.active_adapter}."
    return {
        name.replace(marker, "."): param
        for name, param in model.named_parameters()
        if "lora_" in name and marker in name
    }


def add_rank_adapter(model: PeftModel, cfg: LoraConfig, rank: int) -> str:
    """Add (once) an adapter of rank ``rank`` beside the default one; returns its name.

    Clients with a smaller rank (``lora.client_ranks``) train it. Its alpha is scaled with the
    rank so that the LoRA scale alpha/r, and so the meaning of B·A, is the same for all ranks.
    """
    name = f"rank_{rank}"
    if name not in model.peft_config:
        default = model.peft_config["default"]
        if not isinstance(default, peft.LoraConfig):
            raise TypeError(f"the default adapter is {type(default).__name__}, not LoRA")
        config = peft.LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=rank,
            # alpha·rank/r need not be whole, and peft only ever divides lora_alpha by r.
            lora_alpha=cfg.alpha * rank / cfg.r,  # type: ignore[arg-type]  # peft types it int
            lora_dropout=cfg.dropout,
            target_modules=default.target_modules,
            bias="none",
        )
        model.add_adapter(name, config)
    return name


def _check_keys(expected: set[str], given: set[str]) -> None:
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise ValueError(
            f"adapter state does not match the model: missing {len(missing)} keys "
            f"{missing[:3]}, unexpected {len(unexpected)} keys {unexpected[:3]}"
        )


def set_adapter_state(model: PeftModel, state: AdapterState) -> None:
    """Load ``state`` into the model's adapter (in place, cast to the adapter's dtype/device).

    Raises:
        ValueError: ``state`` lacks some LoRA keys of the model or has keys the model lacks.
    """
    adapter = model.active_adapter
    _check_keys(set(get_peft_model_state_dict(model, adapter_name=adapter)), set(state))
    # peft annotates the result as ``namedtuple``; it is torch's load_state_dict result.
    result: _IncompatibleKeys = set_peft_model_state_dict(model, state, adapter_name=adapter)
    unexpected = [key for key in result.unexpected_keys if "lora_" in key]
    if unexpected:
        raise ValueError(f"adapter state has keys the model did not take: {unexpected[:3]}")


def save_adapter(
    model: PeftModel, state: AdapterState, path: str | Path, private: bool = False
) -> Path:
    """Write ``state`` as a PEFT adapter folder (adapter_config.json + adapter_model.safetensors).

    The folder is written next to ``path`` and renamed into place, so readers see either the old
    adapter or the new one.

    Args:
        model: The peft model whose adapter config describes ``state``.
        state: Adapter weights, e.g. the aggregated global adapter.
        path: Destination folder; an existing one is replaced.
        private: Owner-only permissions (a site's own model).

    Returns:
        The folder, loadable with ``PeftModel.from_pretrained(base_model, path)``.
    """
    path = Path(path)
    with atomic_directory(path, private) as tmp:
        model.peft_config[model.active_adapter].save_pretrained(str(tmp))
        tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()}
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return path


def load_adapter_state(path: str | Path) -> AdapterState:
    """Read the adapter weights of a PEFT folder (as written by ``save_adapter``) as fp32 CPU."""
    weights = Path(path) / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no adapter weights here (expected a PEFT folder)")
    return {key: value.to(torch.float32) for key, value in load_file(str(weights)).items()}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights are counted unpacked."""
    if isinstance(model, PeftModel):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
