"""Local training: trl-style PEFT check, reproducibility, gradient accumulation, metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel

from fedit.client import train as train_module
from fedit.client.train import num_local_steps, resolve_autocast, train_local
from fedit.config import LoraConfig, ModelConfig, TrainConfig
from fedit.data.templates import TokenizedExample, tokenize_examples
from fedit.model import apply_lora, get_adapter_state, load_model, precision

ROWS = [
    ("What is 12 + 35?", "", "47", "math"),
    ("Sort these numbers.", "5, 3, 9", "3, 5, 9", "sort"),
    ("Reverse the words.", "red green blue", "blue green red", "text"),
    ("Convert 3 km to meters.", "", "3000", "math"),
    ("Extract the city from the JSON.", '{"city": "Oslo"}', "Oslo", "text"),
    ("What is 7 + 8?", "", "15", "math"),
    ("Sort these numbers.", "9, 1, 4, 2", "1, 2, 4, 9", "sort"),
    ("Reverse the words.", "the quick brown fox", "fox brown quick the", "text"),
]
EXAMPLES = [{"instruction": i, "input": x, "output": o, "category": c} for i, x, o, c in ROWS]


def _setup(folder: Path, dropout: float = 0.05) -> tuple[PeftModel, list[TokenizedExample]]:
    model, tokenizer = load_model(ModelConfig(name=str(folder), device="cpu"))
    model = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=dropout), seed=0)
    tokenized, _ = tokenize_examples(EXAMPLES, tokenizer, "alpaca", cutoff_len=256)
    return model, tokenized


def _config(**overrides: object) -> TrainConfig:
    values: dict[str, object] = {"batch_size": 4, "micro_batch_size": 2, "autocast": "none"}
    return TrainConfig(**{**values, **overrides})  # type: ignore[arg-type]


def test_every_lora_param_changes_and_no_base_param(tiny_model_dir: Path) -> None:
    model, examples = _setup(tiny_model_dir)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    update = train_local(
        model, examples, _config(local_steps=3, micro_batch_size=4), client_id=0, lr=1e-2, seed=0
    )
    assert update.num_steps == 3
    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        if "lora_" in name:
            assert changed, f"LoRA parameter {name} did not change"
        else:
            assert not changed, f"base parameter {name} changed"
    state = get_adapter_state(model)
    assert all(torch.equal(state[k], update.state[k]) for k in state)
    assert not model.training


def test_same_seed_and_start_give_same_update(tiny_model_dir: Path) -> None:
    model, examples = _setup(tiny_model_dir)
    start = get_adapter_state(model)
    cfg = _config(local_steps=2, micro_batch_size=4)
    kwargs = {"client_id": 1, "lr": 5e-3, "global_state": start}
    first = train_local(model, examples, cfg, seed=11, **kwargs)  # type: ignore[arg-type]
    second = train_local(model, examples, cfg, seed=11, **kwargs)  # type: ignore[arg-type]
    third = train_local(model, examples, cfg, seed=12, **kwargs)  # type: ignore[arg-type]
    assert first.train_loss == second.train_loss
    assert all(torch.equal(first.state[k], second.state[k]) for k in first.state)
    assert any(not torch.equal(first.state[k], third.state[k]) for k in first.state)


def test_gradient_accumulation_matches_one_big_batch(tiny_model_dir: Path) -> None:
    model, examples = _setup(tiny_model_dir, dropout=0.0)
    start = get_adapter_state(model)
    updates = []
    for micro in (2, 4):
        cfg = _config(local_steps=2, micro_batch_size=micro, group_by_length=False)
        updates.append(
            train_local(model, examples, cfg, client_id=0, lr=1e-3, seed=0, global_state=start)
        )
    for other in updates[1:]:
        assert abs(other.train_loss - updates[0].train_loss) < 1e-5
        for key, value in updates[0].state.items():
            torch.testing.assert_close(other.state[key], value, atol=1e-5, rtol=1e-4)


def test_epochs_progress_and_metrics(tiny_model_dir: Path) -> None:
    model, examples = _setup(tiny_model_dir)
    calls: list[tuple[int, int, float]] = []
    cfg = _config(local_epochs=1.5, batch_size=3, micro_batch_size=3, warmup_steps=2)
    update = train_local(
        model, examples, cfg, client_id=5, lr=1e-3, seed=0, progress=lambda *a: calls.append(a)
    )
    assert num_local_steps(cfg, len(examples)) == 4  # ceil(1.5 * 8 / 3)
    assert update.client_id == 5 and update.num_examples == 8 and update.num_steps == 4
    assert [(step, total) for step, total, _ in calls] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert update.train_loss == pytest.approx(sum(loss for *_, loss in calls) / 4)
    metrics = update.metrics
    one_epoch = sum(len(e.input_ids) for e in examples)
    assert one_epoch < metrics["tokens"] < 2 * one_epoch
    assert 0 <= metrics["padding_waste"] < 1
    assert metrics["seconds"] > 0 and metrics["tokens_per_second"] > 0


def test_gradient_checkpointing_and_bf16_autocast(tiny_model_dir: Path) -> None:
    model, examples = _setup(tiny_model_dir)
    cfg = _config(local_steps=2, gradient_checkpointing=True, autocast="bf16")
    update = train_local(model, examples, cfg, client_id=0, lr=1e-3, seed=0)
    assert torch.isfinite(torch.tensor(update.train_loss))
    assert all(v.dtype == torch.float32 for v in update.state.values())
    assert not model.base_model.model.is_gradient_checkpointing


def test_resolve_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert resolve_autocast(cpu, "none") is None
    assert resolve_autocast(cpu, "bf16") is torch.bfloat16
    assert resolve_autocast(cpu, "fp16") is torch.float16
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    assert resolve_autocast(cpu, "auto") is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    assert resolve_autocast(cpu, "auto") is None


@pytest.mark.parametrize("train_on_inputs", [False, True])
def test_token_loss_matches_full_logits_cross_entropy(
    tiny_model_dir: Path, train_on_inputs: bool
) -> None:
    """Skipping the vocabulary projection on unscored positions must not change the loss."""
    from fedit.client.batching import collate

    model, tokenizer = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    model = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), seed=0)
    examples, _ = tokenize_examples(EXAMPLES, tokenizer, "alpaca", 256, train_on_inputs)
    batch = collate(examples[:5], tokenizer.pad_token_id)  # prompts of different lengths
    model.eval()
    with torch.no_grad():
        total, per_row = train_module.token_loss_sum(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            batch["labels"][:, 1:].reshape(-1),
            ignore_index=-100,
            reduction="none",
        ).view(5, -1)
    torch.testing.assert_close(per_row, expected.sum(dim=1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(total, expected.sum(), rtol=1e-5, atol=1e-5)
