"""``train.compile``: the training forward through ``torch.compile``, falling back to eager.

The compiled callable wraps the one shared model (``torch.compile(model)`` shares its
parameters), so only the local training steps run compiled; evaluation and generation keep
calling the eager model, whose shapes (KV cache, one token at a time) would only recompile.
It is built once per model, with dynamic shapes since every batch has its own length.

Compilation happens lazily, at the first step. If it fails (no C++ compiler for inductor, an
operator it cannot trace, ...), ``CompiledTraining.run`` logs one line saying why, and that step
and every later one run eager, so a run never dies because of the optimisation.

``auto`` compiles on a CUDA GPU and stays eager on a CPU, where each new sequence-length bucket
costs seconds of compilation (see docs/benchmarks.md for the measurement).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The model's compiled callable (None once compilation has failed), kept in the model's own
# __dict__: not a registered submodule (state_dict and modules() never see it), and collected
# with the model.
_ATTRIBUTE = "_fedit_compiled"
_MISSING = object()


def compile_wanted(setting: bool | str, device: torch.device) -> bool:
    """Whether ``train.compile`` (true, false or auto) compiles on ``device``."""
    if setting == "auto":
        return device.type == "cuda"
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"train.compile: unknown value {setting!r}; use true, false or auto")


def _compiled(model: nn.Module) -> Any:
    """The model's compiled callable, built on first use; None after a failure."""
    compiled = vars(model).get(_ATTRIBUTE, _MISSING)
    if compiled is _MISSING:
        compiled = torch.compile(model, dynamic=True)
        vars(model)[_ATTRIBUTE] = compiled
    return compiled


class CompiledTraining:
    """Runs a training step on the compiled model, or on the eager one after a failure.

    Example:
        runner = CompiledTraining(model, enabled=True)
        loss = runner.run(lambda forward: step_loss.accumulate(forward, micro, scaler), reset)
    """

    def __init__(self, model: nn.Module, enabled: bool) -> None:
        self.model = model
        self.enabled = enabled

    @property
    def active(self) -> bool:
        """Whether steps currently run compiled."""
        return self.enabled and vars(self.model).get(_ATTRIBUTE, _MISSING) is not None

    def run(self, step: Callable[[nn.Module], T], reset: Callable[[], None]) -> T:
        """``step(forward_model)``; on a compilation failure, ``reset()`` and ``step`` eager."""
        if not self.active:
            return step(self.model)
        try:
            return step(_compiled(self.model))
        except Exception as err:  # noqa: BLE001 - any compiler failure falls back to eager
            vars(self.model)[_ATTRIBUTE] = None
            logger.warning("train.compile: falling back to eager: %s", _reason(err))
            reset()  # gradients of a half-done step
            return step(self.model)


def _reason(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 200 else text[:197] + "..."


def forget(model: nn.Module) -> None:
    """Drop the compiled callable of ``model`` (tests; a model whose structure changed)."""
    vars(model).pop(_ATTRIBUTE, None)
