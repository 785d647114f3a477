"""What one optimizer step minimises: the ``StepLoss`` protocol and the instruction-tuning loss.

``train_local`` draws the round's batches, lets the loss ``prepare`` on them (DPO computes its
reference log-probabilities there, before training mode), then calls ``accumulate`` once per
optimizer step. ``TokenLoss`` is next-token cross-entropy on the response tokens (SFT);
``client/dpo.DPOLoss`` is the preference objective.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from functools import cache
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedit.client.batching import Batch, collate
from fedit.client.device import autocast_context, model_device
from fedit.data.packing import collate_packed
from fedit.data.templates import IGNORE_INDEX, TokenizedExample


class StepLoss(Protocol):
    """An objective of the local run; ``train_local`` calls it, the optimizer steps."""

    def prepare(self, model: nn.Module, batches: Sequence[Sequence[Any]]) -> None:
        """See every batch of the run before training starts (model in eval mode)."""

    def accumulate(
        self, model: nn.Module, micro_batches: Sequence[Sequence[Any]], scaler: torch.amp.GradScaler
    ) -> tuple[float, int, int]:
        """Backpropagate one optimizer step. Returns (loss, real tokens, padded slots)."""
        ...

    def unit_losses(self, model: nn.Module, micro: Sequence[Any]) -> tuple[torch.Tensor, int]:
        """Each privacy unit's own loss, for DP-SGD's per-unit clipping.

        Returns:
            (U,) losses with gradient, and the batch rows each unit spans: the forward pass
            holds ``rows · U`` rows, row ``j · U + u`` belonging to unit ``u``.
        """
        ...

    def metrics(self) -> dict[str, float]:
        """Scalars for the client's reply, over the whole run."""
        ...


@cache
def _accepts_logits_to_keep(model_type: Any) -> bool:
    return "logits_to_keep" in inspect.signature(model_type.forward).parameters


def _base_model(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@cache
def _keeps_a_mask(model_type: Any) -> bool:
    """Whether the model slices with transformers' ``slice_logits_to_keep`` (2-D bool masks)."""
    module = sys.modules.get(model_type.__module__)
    return _accepts_logits_to_keep(model_type) and hasattr(module, "slice_logits_to_keep")


def _model_inputs(batch: Batch) -> dict[str, Tensor]:
    """Padded rows go with their attention mask; packed rows (``data/packing``) with their
    position ids and no mask, from which transformers builds the block-diagonal mask."""
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def token_loss_sum(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over label tokens and the per-row sums.

    Only positions that predict a scored token go through the vocabulary projection: a boolean
    ``logits_to_keep`` mask where the model slices with ``slice_logits_to_keep`` (transformers'
    own models), else the positions from the batch's first label token on. With the loss on
    responses only, that removes most of the (B, T, vocab) logits work.

    Returns:
        (total loss, scalar) and (per-row loss sums, (B,)), both fp32.
    """
    labels = batch["labels"]  # (B, T)
    model_type: Any = type(_base_model(model))
    if _keeps_a_mask(model_type):
        keep = torch.zeros_like(labels, dtype=torch.bool)  # (B, T): position t predicts t+1
        keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
        logits = model(**_model_inputs(batch), use_cache=False, logits_to_keep=keep).logits
        losses = F.cross_entropy(logits.float(), labels[:, 1:][keep[:, :-1]], reduction="none")
        rows = keep.nonzero()[:, 0]  # (N,) the row of each kept position
        per_row = torch.zeros(labels.shape[0], device=losses.device).index_add_(0, rows, losses)
        return per_row.sum(), per_row
    scored = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero()  # logit positions with a target
    first = int(scored[0]) if len(scored) else 0
    kwargs: dict[str, int] = {}
    if first > 0 and _accepts_logits_to_keep(model_type):
        kwargs["logits_to_keep"] = labels.shape[1] - first  # logits of positions first..T-1
    else:
        first = 0
    logits = model(**_model_inputs(batch), use_cache=False, **kwargs).logits[
        :, :-1
    ]  # (B, T-1-first, vocab): position t predicts token t+1
    targets = labels[:, first + 1 :]  # (B, T-1-first)
    token_losses = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(targets.shape)  # (B, T-1-first), 0 where ignored
    per_row = token_losses.sum(dim=1)
    return per_row.sum(), per_row


def count_label_tokens(batch: Batch) -> int:
    """Tokens that contribute to the loss (labels shifted by one, as in ``token_loss_sum``)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def _step(
    model: nn.Module,
    micro_batches: Sequence[Sequence[TokenizedExample]],
    pad_token_id: int,
    autocast: str,
    scaler: torch.amp.GradScaler,
    pack_capacity: int | None = None,
) -> tuple[float, int, int]:
    """Accumulate gradients of one optimizer step. Returns (loss, real tokens, padded slots).

    Each micro-batch's summed loss is divided by the label tokens of the whole step, so the
    accumulated gradient equals that of one big batch, packed (``pack_capacity`` tokens a row)
    or not.
    """
    device = model_device(model)
    batches = [
        collate(micro, pad_token_id)
        if pack_capacity is None
        else collate_packed(micro, pad_token_id, pack_capacity)
        for micro in micro_batches
    ]
    label_tokens = max(1, sum(count_label_tokens(batch) for batch in batches))
    # Counted on the host batches, and the loss read once per step: each read of a value on
    # the GPU waits for the work queued before it (a host-device sync).
    real = sum(int(batch["attention_mask"].sum()) for batch in batches)
    slots = sum(batch["attention_mask"].numel() for batch in batches)
    step_loss = torch.zeros((), dtype=torch.float64, device=device)
    for batch in batches:
        batch = {key: value.to(device) for key, value in batch.items()}
        with autocast_context(device, autocast):
            loss_sum, _ = token_loss_sum(model, batch)
        loss = loss_sum / label_tokens
        scaler.scale(loss).backward()
        step_loss += loss.detach().double()  # the same float64 sums as adding loss.item()s
    return step_loss.item(), real, slots


class TokenLoss:
    """Instruction tuning: mean next-token cross-entropy over the step's label tokens.

    ``pack_capacity`` packs each micro-batch into rows of at most that many tokens
    (``train.packing``, ``data/packing.py``); the loss is the same as unpacked.
    """

    def __init__(self, pad_token_id: int, autocast: str, pack_capacity: int | None = None):
        self.pad_token_id = pad_token_id
        self.autocast = autocast
        self.pack_capacity = pack_capacity

    def prepare(self, model: nn.Module, batches: Sequence[Sequence[Any]]) -> None:
        del model, batches  # nothing to precompute

    def accumulate(
        self,
        model: nn.Module,
        micro_batches: Sequence[Sequence[TokenizedExample]],
        scaler: torch.amp.GradScaler,
    ) -> tuple[float, int, int]:
        return _step(
            model, micro_batches, self.pad_token_id, self.autocast, scaler, self.pack_capacity
        )

    def unit_losses(
        self, model: nn.Module, micro: Sequence[TokenizedExample]
    ) -> tuple[torch.Tensor, int]:
        """Each example's mean loss per label token: the unit of example-level DP."""
        device = model_device(model)
        batch = {k: v.to(device) for k, v in collate(micro, self.pad_token_id).items()}
        tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1).clamp(min=1)  # (B,)
        with autocast_context(device, self.autocast):
            _, per_row = token_loss_sum(model, batch)
        return per_row / tokens, 1

    def metrics(self) -> dict[str, float]:
        return {}
