"""The models one server offers: one base model in memory, several LoRA adapters on top of it.

Model ids: ``base`` is the base model with every adapter disabled; an ``--adapter PATH`` given
without a name is served as ``global`` (a run's global adapter); ``--adapter name=PATH`` is served
as ``name``; ``--run RUN`` serves the run's global adapter and each client's personal adapter as
``client-<id>`` (``serving.personal``). peft keeps all adapters on the one model and ``activate``
switches between them, so callers must hold the generation lock while an adapter is active.

Personal adapters do not each stay resident: every shape gets one peft slot, and ``activate``
loads the asked client's weights into it when another client's are there, so memory does not
grow with the number of clients.
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
from fedit.serving.personal import (
    GLOBAL_DIR,
    client_name,
    global_adapter,
    personal_adapters,
    run_method,
    slot_key,
)
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
        raise ConfigError(
            "--adapter: give at least one adapter folder, e.g. RUN/global_adapter, or --run RUN"
        )
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


def served_adapters(
    values: list[str], run: Path | None
) -> tuple[list[AdapterSpec], dict[int, Path]]:
    """What ``fedit serve`` serves: ``--adapter`` values, and with ``--run`` the run's global
    adapter and its clients' personal ones (client id -> folder).

    Raises:
        ConfigError: as ``parse_adapter_specs``; an unnamed ``--adapter`` beside a run's global
            adapter; a run with no adapter at all.
    """
    if run is None:
        return parse_adapter_specs(values), {}
    specs = parse_adapter_specs(values) if values else []
    found = global_adapter(run)
    if found is not None:
        if any(spec.name == GLOBAL_ID for spec in specs):
            raise ConfigError(
                f"--adapter: an unnamed adapter is served as {GLOBAL_ID!r}, which --run serves "
                f"already ({found}); name it NAME=DIR"
            )
        specs.insert(0, AdapterSpec(GLOBAL_ID, found))
    else:
        logger.info(
            "%s has no %s (personalization.method=%s): no %r model",
            run,
            GLOBAL_DIR,
            run_method(run),
            GLOBAL_ID,
        )
    personal = personal_adapters(run)
    if not specs and not personal:
        raise ConfigError(f"--run: {run} has neither {GLOBAL_DIR}/ nor personal/client-<id>/")
    return specs, personal


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
        personal: Client id -> personal adapter folder (``serving.personal``), served as
            ``client-<id>`` through one swap slot per adapter shape.
    """

    def __init__(
        self,
        specs: list[AdapterSpec],
        model_name: str | None = None,
        default_template: str = "alpaca",
        dtype: str = "fp32",
        personal: dict[int, Path] | None = None,
    ) -> None:
        from fedit.model.loading import context_window, load_model

        personal = personal or {}
        paths = [spec.path for spec in specs] + list(personal.values())
        if not paths:
            raise ConfigError("--run: the run has no global adapter and no personal adapters")
        recorded, _ = run_settings(paths[0])
        base_name = model_name or recorded
        if not base_name:
            raise ConfigError("--model: the adapter does not record its base model; pass --model")
        self.base_name: str = base_name
        self.base, self.tokenizer = load_model(ModelConfig(name=base_name, dtype=dtype))
        first_template = _template(paths[0], default_template)
        self.models = {BASE_ID: ServedModel(BASE_ID, first_template, None)}
        self.model: Any = None  # the PeftModel, once the first adapter wraps the base
        self._personal: dict[str, tuple[Path, str]] = {}  # model id -> (folder, slot)
        self._slots: dict[str, str] = {}  # shape -> slot name
        self._in_slot: dict[str, str] = {}  # slot name -> the model id whose weights it holds
        for spec in specs:
            self._attach(spec.name, spec.path)
            self.models[spec.name] = ServedModel(
                spec.name, _template(spec.path, first_template), spec.path
            )
        for client, path in personal.items():
            self._add_personal(client_name(client), path, first_template)
        for template in {served.template for served in self.models.values()}:
            chat_prompt([{"role": "user", "content": "hi"}], template, self.tokenizer)  # usable?
        assert self.model is not None  # paths is not empty: some adapter wrapped the base
        self.model.eval()
        self.context_window: int | None = context_window(self.model, self.tokenizer)
        logger.info("serving %s on %s", ", ".join(self.models), self.base_name)

    def _attach(self, name: str, path: Path) -> None:
        """Load an adapter into its own peft slot ``name`` (the first one wraps the base)."""
        from peft import PeftModel

        spec = AdapterSpec(name, path)
        if self.model is None:
            self.model = self._load(
                spec, partial(PeftModel.from_pretrained, self.base, str(path), name)
            )
        else:
            self._load(spec, partial(self.model.load_adapter, str(path), name))

    def _add_personal(self, name: str, path: Path, default_template: str) -> None:
        if name in self.models:
            raise ConfigError(f"--adapter: the name {name!r} is also a client adapter of --run")
        shape = slot_key(path)
        slot = self._slots.get(shape)
        if slot is None:  # not a valid --adapter name, so no adapter can clash with it
            slot = self._slots[shape] = f"_personal{len(self._slots)}"
            self._attach(slot, path)
            self._in_slot[slot] = name
        self._personal[name] = (path, slot)
        self.models[name] = ServedModel(name, _template(path, default_template), path)

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
        elif model_id in self._personal:
            path, slot = self._personal[model_id]
            if self._in_slot[slot] != model_id:
                self._swap_in(slot, model_id, path)
            self.model.set_adapter(slot)
            yield self.model
        else:
            self.model.set_adapter(model_id)
            yield self.model

    def _swap_in(self, slot: str, model_id: str, path: Path) -> None:
        """Put a client's weights into the slot its shape shares."""
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        device = next(self.model.parameters()).device
        weights = load_peft_weights(str(path), device=str(device))
        result: Any = set_peft_model_state_dict(self.model, weights, adapter_name=slot)
        if result.unexpected_keys:  # its folder changed since the server started
            raise RuntimeError(f"{path}: weights {result.unexpected_keys[:2]} do not fit {slot}")
        self._in_slot[slot] = model_id
