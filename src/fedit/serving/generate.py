"""Answer prompts with a base model plus a PEFT adapter (``fedit generate``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from fedit.config import ConfigError, ModelConfig
from fedit.integrity import check_adapter_folder

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase


def _run_config(adapter: Path) -> dict | None:
    """The config.yaml of the run that wrote ``adapter`` (``RUN/global_adapter`` or
    ``RUN/checkpoints/round_NNN``), if there is one."""
    for candidate in (adapter.parent / "config.yaml", adapter.parent.parent / "config.yaml"):
        if candidate.is_file():
            return yaml.safe_load(candidate.read_text(encoding="utf-8")) or {}
    return None


def run_settings(adapter: Path) -> tuple[str | None, str | None]:
    """(model.name, data.template) recorded by the run that wrote ``adapter``, if any.

    A run's adapters live in ``RUN/global_adapter`` or ``RUN/checkpoints/round_NNN``.
    """
    cfg = _run_config(adapter)
    if cfg is not None:
        return cfg.get("model", {}).get("name"), cfg.get("data", {}).get("template")
    config = adapter / "adapter_config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("base_model_name_or_path"), None
    return None, None


def run_quantization(adapter: Path) -> str:
    """The ``model.quantization`` the adapter was trained on ("none" when no run records it)."""
    cfg = _run_config(adapter) or {}
    return str(cfg.get("model", {}).get("quantization") or "none")


def load_adapter_model(
    adapter: Path, model_name: str | None = None
) -> tuple[PeftModel, PreTrainedTokenizerBase, str]:
    """Load the base model once and attach the adapter. Returns (model, tokenizer, template)."""
    from peft import PeftModel

    from fedit.model.loading import load_model

    check_adapter_folder(adapter)
    recorded_model, template = run_settings(adapter)
    name = model_name or recorded_model
    if not name:
        raise ConfigError("--model: the adapter does not record its base model; pass --model")
    base, tokenizer = load_model(ModelConfig(name=name))
    model = PeftModel.from_pretrained(base, str(adapter))
    model.eval()
    return model, tokenizer, template or "alpaca"


def generate_with_adapter(
    adapter: Path,
    prompt: str,
    model_name: str | None = None,
    template: str | None = None,
    max_new_tokens: int = 128,
) -> str:
    """Greedy answer to ``prompt`` with the run's prompt template."""
    from fedit.client.evaluate import generate_answers
    from fedit.data.templates import build_prompt

    model, tokenizer, run_template = load_adapter_model(adapter, model_name)
    example = {"instruction": prompt, "input": "", "output": "", "category": ""}
    text = build_prompt(example, template or run_template, tokenizer)
    return generate_answers(model, tokenizer, [text], max_new_tokens, batch_size=1)[0]
