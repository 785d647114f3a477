"""The learning rate within a local run: warmup, then constant, linear or cosine decay."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from fedit.client.schedule import local_step_lr
from fedit.config import ConfigError, load_config
from helpers import tiny_lora


def _hf_lrs(factory, total: int, warmup: int, peak: float) -> list[float]:
    """The lr the HF Trainer uses at each of ``total`` optimizer steps."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=peak)
    scheduler = factory(optimizer, num_warmup_steps=warmup, num_training_steps=total)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize(
    ("schedule", "factory"),
    [("linear", get_linear_schedule_with_warmup), ("cosine", get_cosine_schedule_with_warmup)],
)
def test_decay_after_warmup_matches_the_hf_trainer(schedule: str, factory) -> None:
    total, warmup, peak = 13, 2, 1e-3
    ours = [local_step_lr(peak, s, total, schedule, warmup) for s in range(1, total + 1)]
    theirs = _hf_lrs(factory, total, warmup, peak)
    # After warmup the two agree step for step (Shepherd's local runs).
    assert ours[warmup:] == pytest.approx(theirs[warmup:], rel=1e-9)
    # Our warmup starts at peak / w instead of 0, so no step is spent at lr 0.
    assert ours[:warmup] == pytest.approx([peak / 2, peak])
    assert theirs[0] == 0.0


def test_constant_keeps_the_old_warmup_then_the_peak() -> None:
    lrs = [local_step_lr(0.1, s, 6, "constant", 3) for s in range(1, 7)]
    assert lrs == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.1, 0.1])
    assert [local_step_lr(0.1, s, 4) for s in range(1, 5)] == [0.1] * 4


def test_decay_is_monotone_and_reaches_a_small_last_step() -> None:
    linear = [local_step_lr(1.0, s, 10, "linear") for s in range(1, 11)]
    cosine = [local_step_lr(1.0, s, 10, "cosine") for s in range(1, 11)]
    assert linear[0] == cosine[0] == 1.0
    assert all(a > b for a, b in zip(linear, linear[1:], strict=False))
    assert all(a > b for a, b in zip(cosine, cosine[1:], strict=False))
    assert linear[-1] == pytest.approx(0.1)
    assert cosine[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="train.local_lr_schedule"):
        local_step_lr(1.0, 1, 3, "step")
    with pytest.raises(ConfigError, match="train.local_lr_schedule"):
        load_config(None, ["train.local_lr_schedule=step"])
    assert load_config(None, ["train.local_lr_schedule=cosine"]).train.local_lr_schedule == "cosine"


@pytest.mark.parametrize("private", [False, True])
def test_every_local_loop_steps_at_the_scheduled_rates(tiny_model_dir, private: bool) -> None:
    """SFT (and DPO, same loop) and DP-SGD both take their rates from ``local_step_lr``."""
    from fedit.client.dpsgd import ExamplePrivacy, private_steps
    from fedit.client.train import train_local
    from fedit.config import TrainConfig

    model, _, examples = tiny_lora(tiny_model_dir, dropout=0.05)
    cfg = TrainConfig(
        local_steps=5, batch_size=4, micro_batch_size=4, autocast="none",
        local_lr_schedule="linear", warmup_steps=1,
    )  # fmt: skip
    steps = private_steps(ExamplePrivacy(clip_norm=1.0, noise_multiplier=0.5)) if private else None
    update = train_local(model, examples, cfg, client_id=0, lr=0.1, seed=0, steps=steps)
    expected = sum(local_step_lr(0.1, s, 5, "linear", 1) for s in range(1, 6))
    assert update.metrics["lr_sum"] == pytest.approx(expected)
    assert expected < 0.5  # the decay really lowered it below 5 steps at the peak
