"""Local training on one client: an explicit AdamW loop over the LoRA parameters.

The same function serves the in-process engine and the Flower client. It works on the model it is
given (base model + adapter, already loaded), loads the global adapter, trains, and returns the new
adapter with the client's example count.

Example:
    update = train_local(model, examples, cfg.train, client_id=3, lr=3e-4, seed=42,
                         global_state=global_state)
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel
from torch import nn

from fedit.client.batching import iterate_batches, split_micro_batches
from fedit.client.compile import CompiledTraining, compile_wanted
from fedit.client.device import (  # noqa: F401 - re-exported: where callers have always found them
    autocast_context,
    cpu_supports_bf16,
    model_device,
    model_pad_token_id,
    resolve_autocast,
)
from fedit.client.loss import StepLoss, TokenLoss, count_label_tokens, token_loss_sum  # noqa: F401
from fedit.client.schedule import local_step_lr
from fedit.config import TrainConfig
from fedit.model.lora import adapter_parameters, get_adapter_state, set_adapter_state
from fedit.types import AdapterState, ClientUpdate

logger = logging.getLogger(__name__)


def num_local_steps(cfg: TrainConfig, num_examples: int) -> int:
    """``train.local_steps`` if set, else enough steps for ``train.local_epochs`` passes."""
    if cfg.local_steps is not None:
        return cfg.local_steps
    return max(1, math.ceil(cfg.local_epochs * num_examples / cfg.batch_size))


@contextlib.contextmanager
def _training_mode(model: PeftModel, gradient_checkpointing: bool) -> Iterator[None]:
    """``model.train()`` (and checkpointing) for the block; ``model.eval()`` afterwards."""
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # With a frozen embedding no input requires grad; peft needs this for checkpointing.
        model.enable_input_require_grads()
    model.train()
    try:
        yield
    finally:
        model.eval()
        if gradient_checkpointing:
            model.gradient_checkpointing_disable()
            model.disable_input_require_grads()


@dataclass
class LocalObjective:
    """What a strategy changes in a client's local run; the default is plain FedAvg training.

    Attributes:
        proximal_mu: FedProx's μ; adds μ/2 ‖w − w_global‖² to the loss (as its gradient).
        scaffold_correction: SCAFFOLD's c − c_i, keyed like the adapter state. Every step moves
            the parameters by ``−η_t (c − c_i)`` on top of the optimizer's own step. With SGD
            that is the paper's ``y ← y − η (g + c − c_i)``; applying it to the step rather
            than the gradient keeps it in the same units as the variates (which option II
            measures as parameter change per unit of step size) under AdamW.
        trainable: "all" LoRA parameters, or only "lora_B" (FFA-LoRA freezes A).
        proximal_anchor: where μ/2 ‖w − anchor‖² pulls; None: the state the run starts from
            (FedProx's w_global). Ditto's personal run starts from the client's own v_k and
            is pulled towards the received global adapter w_t, so it sets the anchor apart.
    """

    proximal_mu: float = 0.0
    scaffold_correction: AdapterState | None = None
    trainable: str = "all"
    proximal_anchor: AdapterState | None = None


def _add_proximal_gradient(
    named: dict[str, nn.Parameter], proximal_mu: float, anchor: AdapterState
) -> None:
    """∇ μ/2 ‖w − w_global‖² = μ (w − w_global), added to each LoRA gradient (FedProx)."""
    for name, param in named.items():
        if param.grad is not None:
            param.grad.add_(param.detach() - anchor[name].to(param.device), alpha=proximal_mu)


@torch.no_grad()
def _apply_scaffold_correction(
    named: dict[str, nn.Parameter], scaffold_correction: AdapterState, step_lr: float
) -> None:
    """y ← y − η_t (c − c_i) for the trainable LoRA parameters (SCAFFOLD)."""
    for name, param in named.items():
        if param.requires_grad:
            param.add_(scaffold_correction[name].to(param.device, param.dtype), alpha=-step_lr)


@dataclass
class _LocalOptimizer:
    """A local run's AdamW and loss scaler, with the objective's terms around each step."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    params: list[nn.Parameter]  # the trainable ones, which the optimizer steps and clips
    named: dict[str, nn.Parameter]  # every LoRA parameter by state-dict name
    objective: LocalObjective
    anchor: AdapterState  # what the proximal term pulls towards (FedProx: the start state)
    max_grad_norm: float

    def step(self, step_lr: float) -> None:
        """Apply the accumulated gradients at learning rate ``step_lr``."""
        for group in self.optimizer.param_groups:
            group["lr"] = step_lr
        self.scaler.unscale_(self.optimizer)
        if self.objective.proximal_mu > 0:
            # On unscaled gradients, before clipping: part of the objective's gradient.
            _add_proximal_gradient(self.named, self.objective.proximal_mu, self.anchor)
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.objective.scaffold_correction is not None:
            _apply_scaffold_correction(self.named, self.objective.scaffold_correction, step_lr)


@contextlib.contextmanager
def _frozen(params: list[nn.Parameter]) -> Iterator[None]:
    """Temporarily stop gradients for ``params`` (FFA-LoRA's frozen A)."""
    for param in params:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param in params:
            param.requires_grad_(True)


@dataclass
class StepStats:
    """What one local run measured."""

    losses: list[float]
    real_tokens: int
    padded_slots: int
    lr_sum: float  # Σ_t η_t over the optimizer steps (SCAFFOLD option II divides by it)


def local_optimizer(
    params: list[nn.Parameter],
    named: dict[str, nn.Parameter],
    objective: LocalObjective,
    anchor: AdapterState,
    cfg: TrainConfig,
    lr: float,
    device: torch.device,
    scaled: bool,
) -> _LocalOptimizer:
    """A local run's AdamW over ``params``; ``scaled`` turns on fp16 loss scaling."""
    return _LocalOptimizer(
        optimizer=torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay),
        scaler=torch.amp.GradScaler(device.type, enabled=scaled),
        params=params,
        named=named,
        objective=objective,
        anchor=anchor,
        max_grad_norm=cfg.max_grad_norm,
    )


def _train_steps(
    model: PeftModel,
    examples: Sequence[Any],
    cfg: TrainConfig,
    lr: float,
    seed: int,
    progress: Callable[[int, int, float], None] | None,
    objective: LocalObjective,
    anchor: AdapterState,
    named: dict[str, nn.Parameter],
    step_loss: StepLoss,
) -> StepStats:
    """The optimizer steps of one local run."""
    device = model_device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    # Only fp16 needs loss scaling; a disabled scaler passes everything through.
    fp16 = resolve_autocast(device, cfg.autocast) == torch.float16
    optimizer = local_optimizer(params, named, objective, anchor, cfg, lr, device, scaled=fp16)
    total_steps = num_local_steps(cfg, len(examples))
    batches = list(
        itertools.islice(
            iterate_batches(
                examples, cfg.batch_size, seed=seed, group_by_length=cfg.group_by_length
            ),
            total_steps,
        )
    )
    step_loss.prepare(model, batches)  # before train(): DPO's reference pass, without dropout
    stats = StepStats([], 0, 0, 0.0)
    runner = CompiledTraining(model, compile_wanted(cfg.compile, device))
    with _training_mode(model, cfg.gradient_checkpointing):
        for step, batch in enumerate(batches, start=1):
            step_lr = local_step_lr(lr, step, total_steps, cfg.local_lr_schedule, cfg.warmup_steps)
            micro = split_micro_batches(batch, cfg.micro_batch_size)
            loss, real, slots = runner.run(
                lambda forward: step_loss.accumulate(forward, micro, optimizer.scaler),  # noqa: B023
                lambda: optimizer.optimizer.zero_grad(set_to_none=True),
            )
            optimizer.step(step_lr)
            stats.losses.append(loss)
            stats.real_tokens += real
            stats.padded_slots += slots
            stats.lr_sum += step_lr
            if progress is not None:
                progress(step, total_steps, loss)
    return stats


def train_local(
    model: PeftModel,
    examples: Sequence[Any],
    cfg: TrainConfig,
    *,
    client_id: int,
    lr: float,
    seed: int,
    global_state: AdapterState | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    objective: LocalObjective | None = None,
    step_loss: StepLoss | None = None,
    steps: Callable[..., StepStats] | None = None,
) -> ClientUpdate:
    """Train the model's adapter on one client's examples and return the new adapter.

    A fresh AdamW over the trainable (LoRA) parameters runs ``num_local_steps`` steps through
    the data, each a ``batch_size`` batch of micro-batches, with linear warmup and clipping.

    Args:
        model: The peft model (base + LoRA); trained in place, left in eval mode.
        examples: The client's tokenized training examples (or pairs, for DPO).
        cfg: The ``train`` section of the config.
        client_id: Echoed into the update.
        lr: Peak learning rate for this round (the server applies the across-round schedule).
        seed: Seeds dropout and the batch order; same seed + same start state = same result.
        global_state: Adapter weights to start from (the global model); None keeps the current.
        progress: Called as ``progress(step, total_steps, loss)`` after every optimizer step.
        objective: Strategy changes to the local run (FedProx, SCAFFOLD, FFA-LoRA).
        step_loss: What each step minimises; default ``TokenLoss`` (instruction tuning).
            ``client/dpo.DPOLoss`` trains on preference pairs instead of examples.
        steps: Replaces the step loop (same signature as ``_train_steps``): ``client.dpsgd``.

    Returns:
        The update: adapter state (CPU fp32), ``num_examples``, mean loss over steps, steps and
        ``metrics`` (tokens, padding_waste, seconds, tokens_per_second, lr_sum).
    """
    if not examples:
        raise ValueError(f"client {client_id}: no training examples")
    objective = objective or LocalObjective()
    if objective.trainable not in ("all", "lora_B"):
        raise ValueError(f"trainable: unknown value {objective.trainable!r}; use all or lora_B")
    pull = global_state if objective.proximal_anchor is None else objective.proximal_anchor
    if objective.proximal_mu > 0 and pull is None:
        raise ValueError("proximal_mu > 0 needs the global_state to stay close to")
    if global_state is not None:
        set_adapter_state(model, global_state)
    named = adapter_parameters(model)
    if objective.proximal_anchor is not None and set(objective.proximal_anchor) != set(named):
        differ = sorted(set(named) ^ set(objective.proximal_anchor))[:3]
        raise ValueError(f"proximal_anchor: its keys differ from the adapter's at {differ}")
    frozen = [p for n, p in named.items() if objective.trainable == "lora_B" and ".lora_A." in n]
    anchor = {k: v.detach().clone() for k, v in pull.items()} if pull else {}

    pack_capacity = cfg.cutoff_len if cfg.packing else None
    step_loss = step_loss or TokenLoss(model_pad_token_id(model), cfg.autocast, pack_capacity)

    torch.manual_seed(seed)
    start = time.perf_counter()
    with _frozen(frozen):
        if steps is not None:  # DP-SGD (client.dpsgd): its own per-example step loop
            stats = steps(
                model, examples, cfg, lr, seed, progress, objective, anchor, named, step_loss
            )
        else:
            stats = _train_steps(
                model, examples, cfg, lr, seed, progress, objective, anchor, named, step_loss
            )
    seconds = time.perf_counter() - start
    losses, real_tokens = stats.losses, stats.real_tokens
    mean_loss = sum(losses) / len(losses)
    logger.debug(
        "client %d: %d steps, loss %.4f, %.1fs", client_id, len(losses), mean_loss, seconds
    )
    return ClientUpdate(
        client_id=client_id,
        state=get_adapter_state(model),
        num_examples=len(examples),
        train_loss=mean_loss,
        num_steps=len(losses),
        metrics={
            "tokens": real_tokens,
            "padding_waste": 1 - real_tokens / stats.padded_slots if stats.padded_slots else 0.0,
            "seconds": seconds,
            "tokens_per_second": real_tokens / seconds if seconds > 0 else 0.0,
            "lr_sum": stats.lr_sum,
            **step_loss.metrics(),
        },
    )
