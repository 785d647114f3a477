"""DPO on a client: loss and gradients equal TRL's DPOTrainer, references, only LoRA changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel

from fedit.client.batching import collate
from fedit.client.dpo import DPOLoss, dpo_loss, pair_logps, reference_logps
from fedit.client.train import model_pad_token_id, train_local
from fedit.config import DPOConfig, LoraConfig, ModelConfig, TrainConfig
from fedit.data.preference import TokenizedPair, tokenize_pairs
from fedit.data.templates import IGNORE_INDEX
from fedit.model import apply_lora, get_adapter_state, load_model, set_adapter_state

PAIRS = [
    ("What is 12 + 35?", "47", "48", "math"),
    ("Sort these numbers: 5, 3, 9", "3, 5, 9", "9, 5, 3", "sort"),
    ("Reverse the words: red green blue", "blue green red", "red green blue", "text"),
    ("Convert 3 km to meters.", "3000", "300", "math"),
]
EXAMPLES = [
    {"instruction": p, "input": "", "output": c, "rejected": r, "category": k, "messages": ""}
    for p, c, r, k in PAIRS
]


def _setup(folder: Path) -> tuple[PeftModel, object, list[TokenizedPair]]:
    base, tokenizer = load_model(ModelConfig(name=str(folder), device="cpu"))
    model = apply_lora(base, LoraConfig(r=4, alpha=8, dropout=0.0), seed=0)
    pairs, _ = tokenize_pairs(EXAMPLES, tokenizer, "alpaca", cutoff_len=128)
    return model, tokenizer, pairs


def _perturbed(model: PeftModel, seed: int) -> dict[str, torch.Tensor]:
    """An adapter state far enough from LoRA's init (B = 0) that the policy differs from base."""
    generator = torch.Generator().manual_seed(seed)
    state = get_adapter_state(model)
    return {k: v + 0.3 * torch.randn(v.shape, generator=generator) for k, v in state.items()}


def _trl_inputs(pairs: list[TokenizedPair], pad: int) -> dict[str, torch.Tensor]:
    """TRL's batch layout: [chosen rows; rejected rows], completion_mask on the answer tokens."""
    batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad)
    completion = (batch["labels"] != IGNORE_INDEX).long()
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "completion_mask": completion,
    }


def _lora_grads(model: PeftModel) -> dict[str, torch.Tensor]:
    return {
        n: p.grad.detach().clone()
        for n, p in model.named_parameters()
        if "lora_" in n and ".default." in n and p.grad is not None
    }


@pytest.mark.parametrize(
    ("reference", "loss_type"),
    [("base", "sigmoid"), ("global", "sigmoid"), ("base", "ipo"), ("global", "ipo")],
)
def test_loss_and_gradients_equal_trl(
    tiny_model_dir: Path, tmp_path: Path, reference: str, loss_type: str
) -> None:
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    model, tokenizer, pairs = _setup(tiny_model_dir)
    start, policy = _perturbed(model, seed=1), _perturbed(model, seed=2)
    pad = model_pad_token_id(model)
    cfg = DPOConfig(beta=0.1, reference=reference, loss=loss_type)

    # TRL, given a PeftModel, copies its adapter into a frozen "ref" adapter (the round's start:
    # fedit's `global`); without a "ref" adapter it disables the adapter (fedit's `base`).
    set_adapter_state(model, start)
    args = trl.DPOConfig(
        output_dir=str(tmp_path), report_to=[], beta=0.1, loss_type=[loss_type], use_cpu=True
    )
    data = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    assert "ref" in model.peft_config
    if reference == "base":
        model.delete_adapter("ref")
    model.set_adapter("default")
    set_adapter_state(model, policy)  # as after some local steps
    model.train()
    model.zero_grad()
    theirs = trainer._compute_loss(trainer.model, _trl_inputs(pairs, pad), False)
    theirs.backward()
    trl_grads = _lora_grads(model)

    # fedit: the reference is taken when the round starts, then the policy moves on.
    set_adapter_state(model, start)
    dpo = DPOLoss(cfg, pad, "none", batch_size=2)
    dpo.prepare(model, [pairs])
    set_adapter_state(model, policy)
    model.train()
    model.zero_grad()
    ours = dpo.accumulate(model, [pairs], torch.amp.GradScaler("cpu", enabled=False))[0]
    our_grads = _lora_grads(model)

    assert abs(ours) > 1e-3
    assert ours == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)
    assert set(our_grads) == set(trl_grads) and our_grads
    for name, grad in our_grads.items():
        torch.testing.assert_close(grad, trl_grads[name], rtol=1e-4, atol=1e-7)


def test_base_reference_is_the_bare_base_model(tiny_model_dir: Path) -> None:
    model, _, pairs = _setup(tiny_model_dir)
    set_adapter_state(model, _perturbed(model, seed=3))
    pad = model_pad_token_id(model)
    ours = reference_logps(model, pairs, "base", pad, "none", batch_size=3)
    bare, _ = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    with torch.no_grad():
        expected, _ = pair_logps(bare.eval(), pairs, pad, "none")
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        adapted, _ = pair_logps(model, pairs, pad, "none")
    assert not torch.allclose(adapted, expected, atol=1e-3)  # the adapter does matter


def test_dpo_loss_by_hand() -> None:
    policy = torch.tensor([[-2.0, -5.0], [-4.0, -3.0]])
    reference = torch.tensor([[-3.0, -4.0], [-4.0, -4.0]])
    tokens = torch.tensor([[2.0, 4.0], [1.0, 1.0]])
    losses, rewards = dpo_loss(policy, reference, tokens, 0.5, "sigmoid")
    # h = (1 - (-1)) = 2 and (0 - 1) = -1 -> -log σ(0.5 h)
    expected = -torch.nn.functional.logsigmoid(torch.tensor([1.0, -0.5]))
    torch.testing.assert_close(losses, expected)
    torch.testing.assert_close(rewards, torch.tensor([[0.5, -0.5], [0.0, 0.5]]))
    ipo, _ = dpo_loss(policy, reference, tokens, 0.5, "ipo")
    # (1/2 - (-1)/4 - 1)^2 = 0.0625; (0 - 1 - 1)^2 = 4
    torch.testing.assert_close(ipo, torch.tensor([0.0625, 4.0]))


def test_dpo_training_changes_only_lora_and_reports_metrics(tiny_model_dir: Path) -> None:
    model, _, pairs = _setup(tiny_model_dir)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    cfg = TrainConfig(local_steps=4, batch_size=4, micro_batch_size=2, autocast="none")
    dpo = DPOLoss(DPOConfig(beta=0.5), model_pad_token_id(model), "none", batch_size=4)
    update = train_local(model, pairs, cfg, client_id=0, lr=5e-2, seed=0, step_loss=dpo)
    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        assert changed == ("lora_" in name), name
    metrics = update.metrics
    assert update.train_loss == pytest.approx(metrics["dpo_loss"], rel=1e-6)
    assert 0 <= metrics["reward_accuracy"] <= 1
    # Four steps on the same four pairs: the chosen answers pull ahead of the rejected ones.
    assert metrics["reward_margin"] > 0
    assert (
        metrics["tokens"]
        == sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in pairs) * 4
    )
