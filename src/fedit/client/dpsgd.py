"""DP-SGD inside one client (Abadi et al. 2016): example-level differential privacy.

Each step draws a Poisson batch (every example independently with rate q = batch_size / N),
clips each example's gradient of its own mean token loss to C (under ``train.objective=dpo``
the unit is a preference pair and its DPO loss), sums, adds N(0, z²C²) per
coordinate and divides by the expected batch size q·N; AdamW then steps on that noised mean,
which is post-processing. Per-example gradients come from opacus
(``fedit.privacy.per_example``). The accountant composes one
``PoissonSampledDpEvent(q, Gaussian(z))`` per step, over every round the client trains in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from torch import nn

from fedit.client.batching import split_micro_batches
from fedit.client.loss import StepLoss
from fedit.client.schedule import local_step_lr
from fedit.client.train import (
    LocalObjective,
    StepStats,
    _training_mode,
    local_optimizer,
    model_device,
    num_local_steps,
)
from fedit.config import TrainConfig
from fedit.data.preference import TokenizedPair
from fedit.data.templates import TokenizedExample
from fedit.privacy.per_example import clip_and_sum, per_example_gradients
from fedit.privacy.randomness import EXAMPLE_NOISE, NoiseSource
from fedit.types import AdapterState


@dataclass
class ExamplePrivacy:
    """DP-SGD's knobs for one local run, from the instruction's ``FitConfig``."""

    clip_norm: float  # C, per example
    noise_multiplier: float  # z: noise std z·C on each step's clipped sum
    # The site's own randomness for the Poisson batches and the noise: the instruction's seed
    # (which the server chose) decides neither.
    noise: NoiseSource = field(default_factory=NoiseSource)


def sample_rate(cfg: TrainConfig, num_examples: int) -> float:
    """q = batch_size / N, the Poisson rate of each step's batch (capped at 1)."""
    return min(1.0, cfg.batch_size / num_examples)


@dataclass
class ClippedSum:
    """One Poisson batch's Σ_i clip_C(∇ℓ_i), with what it saw."""

    gradients: dict[str, torch.Tensor]  # per trainable parameter name, fp32
    examples: int
    clipped: int
    loss: float  # mean over the batch's examples of ℓ_i (0 for an empty batch)


def clipped_gradient_sum(
    model: nn.Module,
    batch: list[Any],
    micro_batch_size: int,
    params: dict[str, nn.Parameter],
    clip_norm: float,
    step_loss: StepLoss,
) -> ClippedSum:
    """Σ_i clip_C(∇ℓ_i) over ``batch``, where ℓ_i is unit i's own loss (``unit_losses``: an
    example's mean loss per label token, or a preference pair's DPO loss).

    The model must be in train mode inside ``per_example_gradients``; an empty batch gives
    zeros (DP-SGD still adds its noise).
    """
    total = {
        n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()
    }
    examples, clipped, loss = 0, 0, 0.0
    for micro in split_micro_batches(batch, micro_batch_size) if batch else []:
        per_unit, rows_per_unit = step_loss.unit_losses(model, micro)  # (U,) ℓ_i
        per_unit.sum().backward()
        part, count, over = clip_and_sum(params, clip_norm, rows_per_unit)
        for name, value in part.items():
            total[name].add_(value)
        examples += count
        clipped += over
        loss += float(per_unit.detach().sum())
    return ClippedSum(total, examples, clipped, loss / examples if examples else 0.0)


def _tokens(unit: Any) -> int:
    """Tokens one unit puts through the model: an example, or a pair's two answers."""
    if isinstance(unit, TokenizedPair):
        return len(unit.chosen.input_ids) + len(unit.rejected.input_ids)
    return len(unit.input_ids)


def private_steps(privacy: ExamplePrivacy) -> Callable[..., StepStats]:
    """A step loop for ``train_local`` that runs DP-SGD instead of plain accumulated AdamW."""

    def run(
        model: PeftModel,
        examples: list[TokenizedExample] | list[TokenizedPair],
        cfg: TrainConfig,
        lr: float,
        seed: int,
        progress: Callable[[int, int, float], None] | None,
        objective: LocalObjective,
        anchor: AdapterState,
        named: dict[str, nn.Parameter],
        step_loss: StepLoss,
    ) -> StepStats:
        device = model_device(model)
        trainable = {n: p for n, p in named.items() if p.requires_grad}
        params = list(trainable.values())
        # The noised gradient is written into .grad, not backpropagated from a scaled loss, so
        # there is nothing to unscale: the scaler stays off whatever the autocast dtype.
        optimizer = local_optimizer(params, named, objective, anchor, cfg, lr, device, scaled=False)
        rate = sample_rate(cfg, len(examples))
        expected_batch = rate * len(examples)
        del seed  # train_local seeded dropout with it; the private draws are the site's own
        draws = privacy.noise.generator(EXAMPLE_NOISE)  # one generator: batches, then noise
        std = privacy.noise_multiplier * privacy.clip_norm
        total_steps = num_local_steps(cfg, len(examples))
        stats = StepStats([], 0, 0, 0.0)
        # Poisson batches are drawn inside the loop, so DPO's reference pass (before training
        # mode, from the round's start adapter) covers every pair the run could draw.
        step_loss.prepare(model, [examples])
        with _training_mode(model, False), per_example_gradients(model):
            for step in range(1, total_steps + 1):
                step_lr = local_step_lr(
                    lr, step, total_steps, cfg.local_lr_schedule, cfg.warmup_steps
                )
                chosen = np.flatnonzero(draws.random(len(examples)) < rate)
                batch = [examples[i] for i in chosen]
                result = clipped_gradient_sum(
                    model, batch, cfg.micro_batch_size, trainable, privacy.clip_norm, step_loss
                )
                for name, param in sorted(trainable.items()):
                    normal = draws.standard_normal(tuple(param.shape), np.float32)
                    draw = torch.from_numpy(normal) * std
                    noised = result.gradients[name] + draw.to(param.device)
                    param.grad = (noised / expected_batch).to(param.dtype)
                optimizer.step(step_lr)
                tokens = sum(_tokens(unit) for unit in batch)
                stats.losses.append(result.loss)
                stats.real_tokens += tokens
                stats.padded_slots += tokens
                stats.lr_sum += step_lr
                if progress is not None:
                    progress(step, total_steps, result.loss)
        return stats

    return run
