"""The learning rate within one client's local run: warmup, then constant, linear or cosine decay.

The server's schedule across rounds (``server/loop.round_lr``) sets each round's peak, which
travels to the client as ``FitConfig.lr``. Within the run, step ``s`` (0-based) of ``T`` uses

    warmup (s < w):    peak · (s + 1) / w
    then, with p = (s − w) / (T − w) ∈ [0, 1):
      constant:        peak
      linear:          peak · (1 − p)
      cosine:          peak · (1 + cos(π p)) / 2

which is the HF Trainer's ``get_linear_schedule_with_warmup`` / ``get_cosine_schedule_with_warmup``
after the warmup (decaying towards zero at the end of every client's run, as Shepherd does),
except that warmup starts at ``peak / w`` rather than at 0, so no step is wasted at lr 0. Every
local loop (plain SFT and DPO in ``client/train``, DP-SGD in ``client/dpsgd``) calls
``local_step_lr``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

# Decay factor after warmup as a function of progress p ∈ [0, 1).
LOCAL_LR_SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda progress: 1.0,
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
}


def local_step_lr(
    peak: float, step: int, total_steps: int, schedule: str = "constant", warmup_steps: int = 0
) -> float:
    """The learning rate of optimizer step ``step`` (1-based) of a local run of ``total_steps``.

    Args:
        peak: The round's learning rate (``FitConfig.lr``).
        step: 1 for the first optimizer step of the run.
        total_steps: Optimizer steps in the run.
        schedule: ``train.local_lr_schedule``: constant, linear or cosine.
        warmup_steps: ``train.warmup_steps``: linear warmup at the start of the run.
    """
    if schedule not in LOCAL_LR_SCHEDULES:
        raise ValueError(
            f"train.local_lr_schedule: unknown value {schedule!r}; "
            f"choose {', '.join(LOCAL_LR_SCHEDULES)}"
        )
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    index = step - 1
    if index < warmup_steps:
        return peak * (index + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (index - warmup_steps) / decay_steps)
    return peak * LOCAL_LR_SCHEDULES[schedule](progress)
