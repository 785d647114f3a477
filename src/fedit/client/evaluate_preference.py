"""Preference metrics on held-out pairs: reward accuracy, mean margin, chosen / rejected log-probs.

The implicit reward of an answer is r = β (log π(y|x) − log π_ref(y|x)) with the base model
(adapter disabled) as π_ref, whatever ``dpo.reference`` trained with: one fixed reference makes
the base model, the starting adapter and every trained adapter comparable. The base model itself
has r = 0 everywhere, so its reward accuracy (strictly r_chosen > r_rejected) is 0.

Example:
    reference = base_reference(model, pairs, batch_size=16)  # once; the base never changes
    metrics = evaluate_preferences(model, pairs, beta=0.1, batch_size=16, reference=reference)
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn

from fedit.client.dpo import adapters_off, pair_logps
from fedit.client.evaluate import by_length, eval_mode, report_batch
from fedit.client.train import model_pad_token_id
from fedit.data.preference import TokenizedPair


def base_reference(model: nn.Module, pairs: list[TokenizedPair], batch_size: int) -> torch.Tensor:
    """(P, 2) log-probabilities of chosen and rejected answers under the base model, batched
    exactly as the policy's are, so that the base model scores margins of exactly 0."""
    with adapters_off(model):
        return _policy_logps(model, pairs, batch_size)


def _policy_logps(model: nn.Module, pairs: list[TokenizedPair], batch_size: int) -> torch.Tensor:
    pad = model_pad_token_id(model)
    logps = torch.zeros(len(pairs), 2)
    with eval_mode(model):
        for indices in by_length([len(p.input_ids) for p in pairs], batch_size):
            logps[indices] = pair_logps(model, [pairs[i] for i in indices], pad, "auto")[0].cpu()
            report_batch(len(indices))
    return logps


def evaluate_preferences(
    model: nn.Module,
    pairs: list[TokenizedPair],
    beta: float,
    batch_size: int,
    reference: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Score the active adapter on held-out pairs.

    Args:
        model: The peft model (its active adapter is scored).
        pairs: Tokenized held-out pairs.
        beta: ``dpo.beta``, the scale of the implicit reward.
        batch_size: Pairs per forward pass (each pass holds 2 × this sequences).
        reference: ``base_reference`` of the same pairs, if already computed.

    Returns:
        ``reward_accuracy``, ``reward_margin`` (mean r_chosen − r_rejected), ``chosen_logp`` and
        ``rejected_logp`` (mean summed answer log-probability), ``num_pairs``, and the same four
        per category under ``<metric>_by_category``.
    """
    if not pairs:
        raise ValueError("evaluate_preferences: got no pairs")
    if reference is None:
        reference = base_reference(model, pairs, batch_size)
    policy = _policy_logps(model, pairs, batch_size)  # (P, 2)
    rewards = beta * (policy - reference.cpu())
    margins = rewards[:, 0] - rewards[:, 1]
    rows: dict[str, list[int]] = defaultdict(list)
    for index, pair in enumerate(pairs):
        rows[pair.category].append(index)
    metrics: dict[str, Any] = {"num_pairs": len(pairs)}
    values = {
        "reward_accuracy": (margins > 0).float(),
        "reward_margin": margins,
        "chosen_logp": policy[:, 0],
        "rejected_logp": policy[:, 1],
    }
    for name, column in values.items():
        metrics[name] = float(column.mean())
        metrics[f"{name}_by_category"] = {
            category: float(column[indices].mean()) for category, indices in sorted(rows.items())
        }
    return metrics
