"""``model.adapter``: start a run from an existing PEFT adapter instead of LoRA's fresh init.

The adapter must have the run's LoRA shape (``lora.r``, ``lora.alpha``, ``lora.target_modules``),
so that every client, strategy and checkpoint sees the same tensors as with a fresh adapter;
a mismatch is one ``ConfigError`` naming the ``lora`` key and both values.

Example:
    fedit run configs/dpo.yaml model.adapter=runs/quickstart/global_adapter
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peft import PeftModel

from fedit.config import ConfigError, LoraConfig
from fedit.integrity import check_adapter_folder
from fedit.model.lora import ADAPTER_CONFIG, load_adapter_state, set_adapter_state

KEY = "model.adapter"


def _shape_problems(saved: dict[str, Any], lora: LoraConfig, folder: Path) -> list[str]:
    wanted_targets = lora.target_modules
    saved_targets = saved.get("target_modules")
    if isinstance(wanted_targets, list) and isinstance(saved_targets, list):
        wanted_targets, saved_targets = sorted(wanted_targets), sorted(saved_targets)
    pairs = (
        ("lora.r", lora.r, saved.get("r")),
        ("lora.alpha", lora.alpha, saved.get("lora_alpha")),
        ("lora.target_modules", wanted_targets, saved_targets),
    )
    return [
        f"{KEY}: {folder} has {key.split('.')[1]}={got!r} but {key}={want!r}; set {key}={got}"
        for key, want, got in pairs
        if want != got
    ]


def load_start_adapter(model: PeftModel, folder: str, lora: LoraConfig) -> None:
    """Write the adapter in ``folder`` into the model's (active) adapter.

    Raises:
        ConfigError: The folder is not a whole PEFT adapter, or its shape is not the run's.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{KEY}: adapter folder not found: {folder}")
    check_adapter_folder(path, KEY)
    saved = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    problems = _shape_problems(saved, lora, path)
    if problems:
        raise ConfigError(problems)
    try:
        set_adapter_state(model, load_adapter_state(path))
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise ConfigError(f"{KEY}: {path} does not fit this base model: {err}") from None
