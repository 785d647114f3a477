"""Example-level DP: opacus's per-example clipping equals a hand loop; DP-SGD in fit_client."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from fedit.client.batching import collate
from fedit.client.dpo import DPOLoss
from fedit.client.dpsgd import clipped_gradient_sum
from fedit.client.fit import fit_client
from fedit.client.loss import TokenLoss
from fedit.client.site_policy import SitePolicy
from fedit.client.train import model_pad_token_id, token_loss_sum
from fedit.config import Config, DPOConfig, LoraConfig, ModelConfig, TrainConfig
from fedit.data.preference import tokenize_pairs
from fedit.data.templates import IGNORE_INDEX, tokenize_examples
from fedit.model import apply_lora, get_adapter_state, load_model, set_adapter_state
from fedit.model.lora import adapter_parameters
from fedit.privacy import randomness
from fedit.privacy.per_example import per_example_gradients
from fedit.types import FitConfig, FitInstruction

EXAMPLES = [
    {"instruction": f"What is {a} + {b}?", "input": "", "output": str(a + b), "category": "math"}
    for a, b in [(1, 2), (30, 12), (7, 8), (40, 2), (5, 5), (9, 90), (11, 4)]
]
LORA = LoraConfig(r=4, alpha=8, dropout=0.0)


@pytest.fixture
def setup(tiny_model_dir: Path):
    model, tokenizer = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    model = apply_lora(model, LORA, seed=0)
    # B starts at zero; move it so that A's gradients are not zero too
    state = {k: v + 0.05 if ".lora_B." in k else v for k, v in get_adapter_state(model).items()}
    tokenized, _ = tokenize_examples(EXAMPLES, tokenizer, "alpaca", cutoff_len=128)
    pairs, _ = tokenize_pairs(
        [dict(e, rejected=str(int(e["output"]) + 1), messages="") for e in EXAMPLES],
        tokenizer,
        "alpaca",
        cutoff_len=128,
    )  # off-by-one sums rejected, as the synthetic suite's pairs
    return model, tokenized, state, pairs


def _example_loss(model, example):
    batch = collate([example], model_pad_token_id(model))
    _, per_row = token_loss_sum(model, batch)
    return per_row.sum() / (batch["labels"][:, 1:] != IGNORE_INDEX).sum()


def _hand_loop(model, units, params, clip_norm, unit_loss=_example_loss):
    """One unit at a time: its own loss, backward, clip, add."""
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    clipped = 0
    for unit in units:
        model.zero_grad(set_to_none=True)
        unit_loss(model, unit).backward()
        grads = {n: p.grad.detach().clone() for n, p in params.items()}
        norm = sum(float(g.pow(2).sum()) for g in grads.values()) ** 0.5
        clipped += norm > clip_norm
        for n in total:
            total[n] += grads[n] * min(1.0, clip_norm / norm)
    model.zero_grad(set_to_none=True)
    return total, clipped


@pytest.mark.parametrize("clip_norm", [0.05, 1e6])  # most clipped / none clipped
def test_per_example_clipping_equals_a_hand_loop(setup, clip_norm):
    model, examples, _, _ = setup
    params = {n: p for n, p in adapter_parameters(model).items() if p.requires_grad}
    model.train()
    expected, expected_clipped = _hand_loop(model, examples, params, clip_norm)
    loss = TokenLoss(model_pad_token_id(model), "none")
    with per_example_gradients(model):
        result = clipped_gradient_sum(model, examples, 3, params, clip_norm, loss)  # 3 micro
    model.eval()
    assert result.examples == len(examples)
    assert result.clipped == expected_clipped
    assert (result.clipped == len(examples)) == (clip_norm < 1)
    for name in expected:
        torch.testing.assert_close(result.gradients[name], expected[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("clip_norm", [0.05, 1e6])
def test_dpo_clips_each_pair_as_one_unit(setup, clip_norm):
    # A pair's chosen and rejected rows sit U rows apart in one forward pass; their per-row
    # gradients must add up to the pair's own DPO gradient before it is clipped.
    model, _, start, pairs = setup
    set_adapter_state(model, start)  # the policy differs from the base reference
    params = {n: p for n, p in adapter_parameters(model).items() if p.requires_grad}
    dpo = DPOLoss(DPOConfig(beta=0.5), model_pad_token_id(model), "none", batch_size=4)
    dpo.prepare(model, [pairs])
    model.train()

    def pair_loss(model, pair):
        return dpo.unit_losses(model, [pair])[0].sum()

    expected, expected_clipped = _hand_loop(model, pairs, params, clip_norm, pair_loss)
    with per_example_gradients(model):
        result = clipped_gradient_sum(model, pairs, 3, params, clip_norm, dpo)
    model.eval()
    assert result.examples == len(pairs) and result.clipped == expected_clipped
    for name in expected:
        torch.testing.assert_close(result.gradients[name], expected[name], rtol=1e-4, atol=1e-6)


def test_dp_sgd_trains_dpo_pairs_and_replies_nothing_per_client(setup):
    model, _, start, pairs = setup
    cfg = Config(
        lora=LORA,
        train=TrainConfig(
            objective="dpo", local_steps=3, batch_size=3, micro_batch_size=2, train_on_inputs=False
        ),
        dpo=DPOConfig(beta=0.5),
    )
    config = FitConfig(
        lr=5e-2, rank=LORA.r, seed=3, dp_level="example", dp_clip_norm=0.5, dp_noise_multiplier=1.0
    )
    update = fit_client(model, pairs, cfg, FitInstruction(0, start, config))
    assert any(not torch.equal(update.state[k], start[k]) for k in start)
    # The rewards, the loss, the counts of drawn and clipped pairs all depend on the site's
    # data: none of them leaves it.
    assert update.metrics == {}
    assert (update.num_examples, update.train_loss, update.num_steps) == (0, 0.0, 0)


def test_dp_sgd_trains_b_only_and_draws_its_batches_and_noise_itself(setup, monkeypatch):
    model, examples, start, _ = setup
    cfg = Config(lora=LORA, train=TrainConfig(local_steps=3, batch_size=2, micro_batch_size=2))
    config = FitConfig(
        lr=5e-2,
        rank=LORA.r,
        seed=3,
        trainable="lora_B",
        dp_level="example",
        dp_clip_norm=0.5,
        dp_noise_multiplier=1.0,
    )

    def fit(fit_config, policy=None):
        return fit_client(model, examples, cfg, FitInstruction(0, start, fit_config), policy=policy)

    update = fit(config)
    for key, value in update.state.items():
        assert torch.equal(value, start[key]) == (".lora_A." in key), key
    again = fit(config)  # same instruction, same seed: other batches and noise
    assert any(not torch.equal(update.state[k], again.state[k]) for k in update.state)
    # The site's own opt-in to reproducible noise makes it repeat exactly.
    reproducible = SitePolicy(reproducible_noise=True)
    first, second = fit(config, reproducible), fit(config, reproducible)
    for key in first.state:
        torch.testing.assert_close(first.state[key], second.state[key], rtol=0, atol=0)
    # With the site's entropy held fixed, the seed the server sends decides nothing private
    # (it still seeds LoRA dropout, which this tiny model does not use).
    monkeypatch.setattr(randomness.secrets, "randbits", lambda bits: 99)
    one, other = fit(config), fit(dataclasses.replace(config, seed=4))
    for key in one.state:
        torch.testing.assert_close(one.state[key], other.state[key], rtol=0, atol=0)
