"""Base model loading and the LoRA adapter (apply, get/set state, save/load)."""

from fedit.model.loading import (
    EMBEDDED_MODELS,
    ensure_embedded_model,
    load_model,
    resolve_model_path,
)
from fedit.model.lora import (
    apply_lora,
    count_parameters,
    get_adapter_state,
    load_adapter_state,
    save_adapter,
    set_adapter_state,
)

__all__ = [
    "EMBEDDED_MODELS",
    "apply_lora",
    "count_parameters",
    "ensure_embedded_model",
    "get_adapter_state",
    "load_adapter_state",
    "load_model",
    "resolve_model_path",
    "save_adapter",
    "set_adapter_state",
]
