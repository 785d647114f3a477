"""Evaluation: token loss per category, batched greedy generation, and accuracy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from fedit.client.evaluate import (
    evaluate_accuracy,
    evaluate_loss,
    generate_answers,
    generate_token_ids,
)
from fedit.config import ModelConfig
from fedit.data.templates import build_prompt, tokenize_examples
from fedit.model import load_model

ROWS = [
    ("What is 12 + 35?", "", "47", "math"),
    ("Reverse the words.", "red green", "green red", "text"),
    ("What is 7 + 8?", "", "15", "math"),
    ("Sort.", "9, 1, 4, 2, 5, 3", "1, 2, 3, 4, 5, 9", "sort"),
    ("Reverse the words.", "the quick brown fox", "fox brown quick the", "text"),
]
EXAMPLES = [{"instruction": i, "input": x, "output": o, "category": c} for i, x, o, c in ROWS]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    return load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))


@pytest.fixture(scope="module")
def chaotic(tiny_model_dir: Path) -> tuple[Any, Any]:
    """The tiny model with large random weights: its greedy output depends on the whole context,
    so any padding or position mistake shows up (the default init just repeats one token)."""
    model, tokenizer = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model, tokenizer


def test_evaluate_loss_per_category(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    tokenized, _ = tokenize_examples(EXAMPLES, tokenizer, "alpaca", cutoff_len=256)
    model.train()
    metrics = evaluate_loss(model, tokenized, batch_size=2, autocast="none")
    assert model.training  # the caller's mode is restored
    model.eval()
    assert set(metrics["loss_by_category"]) == {"math", "sort", "text"}
    assert all(math.isfinite(v) and v > 0 for v in metrics["loss_by_category"].values())
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
    # A random model over a ~400-token vocabulary: loss near log(vocab).
    assert abs(metrics["loss"] - math.log(model.config.vocab_size)) < 1.0

    one_by_one = evaluate_loss(model, tokenized, batch_size=1, autocast="none")
    assert one_by_one["loss"] == pytest.approx(metrics["loss"], rel=1e-5)
    assert one_by_one["num_tokens"] == metrics["num_tokens"]

    # Matches the model's own (label-token mean) loss for a single example.
    single = tokenized[0]
    with torch.no_grad():
        expected = model(
            input_ids=torch.tensor([single.input_ids]), labels=torch.tensor([single.labels])
        ).loss.item()
    assert evaluate_loss(model, [single], 1, "none")["loss"] == pytest.approx(expected, rel=1e-5)


def test_generate_left_padding_matches_unbatched(chaotic: tuple[Any, Any]) -> None:
    model, tokenizer = chaotic
    prompts = [build_prompt(example, "alpaca", tokenizer) for example in EXAMPLES]
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) == len(prompts)
    padding_side = tokenizer.padding_side
    batched = generate_token_ids(model, tokenizer, prompts, 8, batch_size=4, autocast="none")
    single = generate_token_ids(model, tokenizer, prompts, 8, batch_size=1, autocast="none")
    assert batched == single
    assert len({tuple(ids) for ids in batched}) > 1  # not one degenerate answer for all
    answers = generate_answers(model, tokenizer, prompts, 8, batch_size=4, autocast="none")
    assert answers == [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in single]
    assert tokenizer.padding_side == padding_side
    assert generate_answers(model, tokenizer, [], 8, 4) == []


def test_evaluate_accuracy_against_own_answers(chaotic: tuple[Any, Any]) -> None:
    model, tokenizer = chaotic
    examples = [{**example, "output": f"ref-{i}"} for i, example in enumerate(EXAMPLES)]
    prompts = [build_prompt(example, "alpaca", tokenizer) for example in examples]
    own = generate_answers(model, tokenizer, prompts, 6, batch_size=1, autocast="none")
    expected = {f"ref-{i}": answer for i, answer in enumerate(own)}

    def matches_own(prediction: str, reference: str) -> bool:
        return prediction == expected[reference]

    result = evaluate_accuracy(model, tokenizer, examples, "alpaca", 6, 3, matches_own, "none")
    assert result["accuracy"] == 1.0 and result["num_examples"] == 5
    assert result["accuracy_by_category"] == {"math": 1.0, "sort": 1.0, "text": 1.0}

    never = evaluate_accuracy(model, tokenizer, examples, "alpaca", 6, 3, lambda p, r: False)
    assert never["accuracy"] == 0.0


def test_evaluate_accuracy_chat_template(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    result = evaluate_accuracy(
        model, tokenizer, EXAMPLES[:2], "chat", 4, 2, lambda p, r: True, "none"
    )
    assert result["accuracy"] == 1.0
