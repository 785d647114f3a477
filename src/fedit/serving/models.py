"""The models one server offers: one base model in memory, several LoRA adapters on top of it.

Model ids: ``base`` is the base model with every adapter disabled; an ``--adapter PATH`` given
without a name is served as ``global`` (a run's global adapter); ``--adapter name=PATH`` is served
as ``name``. peft keeps all adapters on the one model and ``activate`` switches between them, so
callers must hold the generation lock while an adapter is active.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from fedit.config import ConfigError, ModelConfig
from fedit.integrity import check_adapter_folder
from fedit.serving.generate import run_settings
from fedit.serving.prompts import TEMPLATES, chat_prompt

logger = logging.getLogger(__name__)

BASE_ID = "base"
GLOBAL_ID = "global"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class AdapterSpec:
    """One ``--adapter`` argument: the id it is served as and its folder."""

    name: str
    path: Path


@dataclass(frozen=True)
class ServedModel:
    """One entry of ``GET /v1/models``."""

    id: str
    template: str
    adapter: Path | None  # None for the base model


def parse_adapter_specs(values: list[str]) -> list[AdapterSpec]:
    """Parse ``--adapter PATH`` (at most one, served as ``global``) and ``--adapter name=PATH``.

    Raises:
        ConfigError: Bad or duplicate names, more than one unnamed adapter, or a folder that is
            not a whole PEFT adapter (config and weights).
    """
    if not values:
        raise ConfigError("--adapter: give at least one adapter folder, e.g. RUN/global_adapter")
    specs: list[AdapterSpec] = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = GLOBAL_ID, value
        elif not _NAME.match(name) or not path:
            raise ConfigError(
                f"--adapter: {value!r} is not name=path (names use letters, digits, '.', '_', '-')"
            )
        if name == BASE_ID:
            raise ConfigError(f"--adapter: {BASE_ID!r} is reserved for the base model")
        if any(spec.name == name for spec in specs):
            hint = "; name the others name=path" if name == GLOBAL_ID else ""
            raise ConfigError(f"--adapter: the name {name!r} is given twice{hint}")
        adapter = Path(path).expanduser()
        check_adapter_folder(adapter)
        specs.append(AdapterSpec(name, adapter))
    return specs


def _template(adapter: Path, default: str) -> str:
    _, recorded = run_settings(adapter)
    template = recorded or default
    if template not in TEMPLATES:
        raise ConfigError(f"--template: unknown value {template!r}; choose alpaca or chat")
    return template


class ServedModels:
    """The base model with its adapters loaded once, and the prompt template of each model id.

    Args:
        specs: From ``parse_adapter_specs``; the first one names the base model and template.
        model_name: Base model (default: the first adapter's run's ``model.name``).
        default_template: Template for adapters whose run records none.
        dtype: ``model.dtype`` for the base model.
    """

    def __init__(
        self,
        specs: list[AdapterSpec],
        model_name: str | None = None,
        default_template: str = "alpaca",
        dtype: str = "fp32",
    ) -> None:
        from peft import PeftModel

        from fedit.model.loading import context_window, load_model

        recorded, _ = run_settings(specs[0].path)
        base_name = model_name or recorded
        if not base_name:
            raise ConfigError("--model: the adapter does not record its base model; pass --model")
        self.base_name: str = base_name
        base, self.tokenizer = load_model(ModelConfig(name=base_name, dtype=dtype))
        first_template = _template(specs[0].path, default_template)
        self.models = {BASE_ID: ServedModel(BASE_ID, first_template, None)}
        first = specs[0]
        load_first = partial(PeftModel.from_pretrained, base, str(first.path), first.name)
        self.model: Any = self._load(first, load_first)
        for spec in specs[1:]:
            self._load(spec, partial(self.model.load_adapter, str(spec.path), spec.name))
        for spec in specs:
            template = _template(spec.path, first_template)
            self.models[spec.name] = ServedModel(spec.name, template, spec.path)
        for template in {served.template for served in self.models.values()}:
            chat_prompt([{"role": "user", "content": "hi"}], template, self.tokenizer)  # usable?
        self.model.eval()
        self.context_window = context_window(self.model, self.tokenizer)
        logger.info("serving %s on %s", ", ".join(self.models), self.base_name)

    def _load(self, spec: AdapterSpec, load: Callable[[], Any]) -> Any:
        try:
            return load()
        except (RuntimeError, ValueError, KeyError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise ConfigError(
                f"--adapter: cannot load {spec.path} onto {self.base_name} ({reason}); "
                "was it trained on another base model? pass --model"
            ) from None

    def get(self, model_id: str) -> ServedModel | None:
        """The served model with this id, or None."""
        return self.models.get(model_id)

    @contextmanager
    def activate(self, model_id: str) -> Iterator[Any]:
        """Make ``model_id`` the active model for the block and yield the (peft) model.

        Not thread-safe by itself: hold the generation lock around it.
        """
        if model_id == BASE_ID:
            with self.model.disable_adapter():
                yield self.model
        else:
            self.model.set_adapter(model_id)
            yield self.model
