"""Direct preference optimisation on a client (Rafailov et al. 2023), in fedit's own step loop.

For a pair (x, y_w, y_l) with sequence log-probabilities log π(y|x) summed over the answer
tokens, and a frozen reference π_ref:

    h = (log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))
    sigmoid (DPO):  L = −log σ(β h)
    ipo (Azar et al. 2023, length-normalised as TRL does):
                    L = (h_w / |y_w| − h_l / |y_l| − 1 / (2β))²

The implicit rewards are r = β (log π − log π_ref); reward accuracy is the share of pairs with
r_w > r_l, and the margin is r_w − r_l. This is TRL's ``DPOTrainer`` loss (tested equal, loss
and gradients, in tests/client/test_dpo.py).

The reference is ``base`` (the adapter disabled; TRL's behaviour with peft) or ``global`` (the
adapter the round started from, frozen). Neither changes within a round, so ``prepare`` computes
each pair's reference log-probabilities once, without gradients and in eval mode, for the pairs
the round's batches hold; chosen and rejected sequences share one forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from fedit.client.batching import collate
from fedit.client.device import autocast_context, model_device
from fedit.client.loss import token_loss_sum
from fedit.config import DPOConfig
from fedit.data.preference import TokenizedPair
from fedit.data.templates import IGNORE_INDEX


def dpo_loss(
    policy: torch.Tensor,
    reference: torch.Tensor,
    answer_tokens: torch.Tensor,
    beta: float,
    loss_type: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss and implicit rewards.

    Args:
        policy: (P, 2) log π(chosen), log π(rejected).
        reference: (P, 2) the same under the reference (no gradient).
        answer_tokens: (P, 2) scored tokens of each answer (IPO's length normalisation).
        beta: DPO's β.
        loss_type: sigmoid or ipo.

    Returns:
        (P,) losses and (P, 2) rewards β (log π − log π_ref), detached.
    """
    logratios = policy - reference  # (P, 2)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * (logratios[:, 0] - logratios[:, 1]))
    elif loss_type == "ipo":
        normalised = logratios / answer_tokens.clamp(min=1)
        losses = (normalised[:, 0] - normalised[:, 1] - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"dpo.loss: unknown value {loss_type!r}; choose sigmoid or ipo")
    return losses, beta * logratios.detach()


def pair_logps(
    model: nn.Module, pairs: Sequence[TokenizedPair], pad_token_id: int, autocast: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probabilities of every pair's answers, chosen and rejected in one batch.

    Returns:
        (P, 2) summed answer-token log-probabilities (fp32) and (P, 2) answer-token counts.
    """
    device = model_device(model)
    rows = [pair.chosen for pair in pairs] + [pair.rejected for pair in pairs]
    batch = {key: value.to(device) for key, value in collate(rows, pad_token_id).items()}
    with autocast_context(device, autocast):
        _, per_row = token_loss_sum(model, batch)  # (2P,) summed negative log-likelihood
    tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1).float()  # (2P,)
    count = len(pairs)
    return -torch.stack((per_row[:count], per_row[count:]), dim=1), torch.stack(
        (tokens[:count], tokens[count:]), dim=1
    )


def adapters_off(model: nn.Module) -> contextlib.AbstractContextManager:
    """Disable the adapter for the block, unless it is off already (or there is none): peft's
    ``disable_adapter()`` turns adapters back on when it exits, even inside another one."""
    disable_adapter = getattr(model, "disable_adapter", None)
    if disable_adapter is None:
        return contextlib.nullcontext()  # a bare base model
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    if layers and all(layer.disable_adapters for layer in layers):
        return contextlib.nullcontext()
    return disable_adapter()


@torch.no_grad()
def reference_logps(
    model: nn.Module,
    pairs: Sequence[TokenizedPair],
    reference: str,
    pad_token_id: int,
    autocast: str,
    batch_size: int,
) -> torch.Tensor:
    """(P, 2) reference log-probabilities: the adapter disabled (base) or as it is (global)."""
    context = adapters_off(model) if reference == "base" else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    parts = []
    try:
        with context:
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start : start + batch_size]
                parts.append(pair_logps(model, chunk, pad_token_id, autocast)[0])
    finally:
        model.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0, 2)


class DPOLoss:
    """The ``StepLoss`` of ``train.objective=dpo``: one local run's DPO steps and metrics."""

    def __init__(self, cfg: DPOConfig, pad_token_id: int, autocast: str, batch_size: int):
        self.cfg = cfg
        self.pad_token_id = pad_token_id
        self.autocast = autocast
        self.batch_size = batch_size  # pairs per reference forward pass
        self._reference: dict[int, torch.Tensor] = {}  # id(pair) -> (2,), this round only
        self._sums = {"pairs": 0.0, "loss": 0.0, "correct": 0.0, "margin": 0.0}

    def prepare(self, model: nn.Module, batches: Sequence[Sequence[TokenizedPair]]) -> None:
        """Reference log-probabilities of every pair the round uses, once each."""
        pending = list({id(pair): pair for batch in batches for pair in batch}.values())
        logps = reference_logps(
            model, pending, self.cfg.reference, self.pad_token_id, self.autocast, self.batch_size
        )
        self._reference = {id(pair): row for pair, row in zip(pending, logps, strict=True)}

    def _losses(
        self, model: nn.Module, micro: Sequence[TokenizedPair]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(P,) DPO losses of a micro-batch (with gradient) and its answers' token counts;
        the run's loss, reward accuracy and margin sums take them in."""
        policy, tokens = pair_logps(model, micro, self.pad_token_id, self.autocast)
        reference = torch.stack([self._reference[id(pair)] for pair in micro])
        losses, rewards = dpo_loss(
            policy, reference.to(policy.device), tokens, self.cfg.beta, self.cfg.loss
        )
        margins = rewards[:, 0] - rewards[:, 1]
        self._sums["pairs"] += len(micro)
        self._sums["loss"] += float(losses.detach().sum())
        self._sums["correct"] += float((margins > 0).sum())
        self._sums["margin"] += float(margins.sum())
        return losses, tokens

    def accumulate(
        self,
        model: nn.Module,
        micro_batches: Sequence[Sequence[TokenizedPair]],
        scaler: torch.amp.GradScaler,
    ) -> tuple[float, int, int]:
        """Backpropagate the mean DPO loss over the step's pairs. Returns (loss, tokens, slots)."""
        num_pairs = sum(len(micro) for micro in micro_batches)
        step_loss, real, slots = 0.0, 0, 0
        for micro in micro_batches:
            losses, _ = self._losses(model, micro)
            loss = losses.sum() / num_pairs  # the accumulated gradient is the step's mean
            scaler.scale(loss).backward()
            step_loss += loss.item()
            lengths = [
                len(side.input_ids) for pair in micro for side in (pair.chosen, pair.rejected)
            ]
            real += sum(lengths)
            slots += max(lengths) * len(lengths)
        return step_loss, real, slots

    def unit_losses(
        self, model: nn.Module, micro: Sequence[TokenizedPair]
    ) -> tuple[torch.Tensor, int]:
        """Each pair's DPO loss: under example-level DP the unit is the preference pair, whose
        chosen and rejected rows (``pair_logps`` puts them U rows apart) are clipped together."""
        return self._losses(model, micro)[0], 2

    def metrics(self) -> dict[str, float]:
        """DPO loss, reward accuracy and mean reward margin over the run's pairs (as trained)."""
        pairs = max(1.0, self._sums["pairs"])
        return {
            "dpo_loss": self._sums["loss"] / pairs,
            "reward_accuracy": self._sums["correct"] / pairs,
            "reward_margin": self._sums["margin"] / pairs,
        }
