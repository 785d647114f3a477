"""Multiple choice: both file layouts and their errors; log-likelihood scores checked by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fedit.config import ConfigError, ModelConfig
from fedit.data.templates import build_prompt
from fedit.evaluation.multiple_choice import (
    MCQuestion,
    load_mc_questions,
    mc_example,
    option_continuation,
    score_multiple_choice,
)
from fedit.model import load_model


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Reading


def test_load_mmlu_layout(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "mmlu.jsonl",
        [
            {
                "question": "Sky?",
                "choices": ["red", "green", "blue"],
                "answer": 2,
                "subject": "sci",
            },
            {"question": "2+2?", "options": ["3", "4"], "answer": "B", "category": "math"},
            {"question": "Grass?", "options": {"B": "green", "A": "red"}, "answer": "green"},
            {"question": "Odd?", "options": [1, 2, 3], "answer": "(A)"},
        ],
    )
    assert load_mc_questions(path) == [
        MCQuestion("Sky?", ["red", "green", "blue"], 2, "sci"),
        MCQuestion("2+2?", ["3", "4"], 1, "math"),
        MCQuestion("Grass?", ["red", "green"], 1, "mmlu"),  # dict sorted by letter
        MCQuestion("Odd?", ["1", "2", "3"], 0, "mmlu"),
    ]


def test_load_mmlu_json_array(tmp_path: Path) -> None:
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([{"question": "q", "choices": ["x", "y"], "answer": "1"}]))
    assert load_mc_questions(path) == [MCQuestion("q", ["x", "y"], 1, "arr")]


def test_load_alpaca_layout(tmp_path: Path) -> None:
    inline = "Which color is the sky?\nOptions: A. red, B. green, C. blue"
    per_line = "Which color is grass?\nA. red\nB. green\nC. blue\nThink first."
    path = _write_jsonl(
        tmp_path / "alpaca.jsonl",
        [
            {"instruction": inline, "output": "The answer is: C. blue"},
            {"instruction": per_line, "output": "B", "subject": "bio"},
            {
                "instruction": "Pick one.",
                "input": "Fire?\nOptions: A. hot, B. cold",
                "output": "(A)",
            },
            {"instruction": inline, "output": "Answer: C"},
            {"instruction": "Vitamin A. Which food has it?\nA. carrot\nB. bread", "output": "A."},
        ],
    )
    questions = load_mc_questions(path)
    assert questions[0] == MCQuestion(
        "Which color is the sky?", ["red", "green", "blue"], 2, "alpaca"
    )
    assert questions[1] == MCQuestion(
        "Which color is grass?\nThink first.", ["red", "green", "blue"], 1, "bio"
    )
    assert questions[2] == MCQuestion("Pick one.\n\nFire?", ["hot", "cold"], 0, "alpaca")
    assert questions[3].answer == 2
    # An "A." inside the question is not the start of the options.
    assert questions[4] == MCQuestion(
        "Vitamin A. Which food has it?", ["carrot", "bread"], 0, "alpaca"
    )


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"question": "q", "options": ["a", "b", "c", "d"], "answer": "E"},
            "answer 'E' is not one of A-D",
        ),
        (
            {"question": "q", "options": ["a", "b"], "answer": 5},
            "answer 5 is not an option index 0-1",
        ),
        (
            {"question": "q", "options": ["a", "b"], "answer": "maybe"},
            "answer 'maybe' is not a letter",
        ),
        ({"question": "q", "answer": "A"}, "missing 'options' \\(or 'choices'\\)"),
        ({"question": "q", "options": ["a", "b"]}, "missing 'answer'"),
        ({"question": "q", "options": ["a"], "answer": "A"}, "'options' needs 2 to 26"),
        (
            {"question": "q", "options": {"A": "x", "C": "y"}, "answer": "A"},
            "'options' keys must be",
        ),
        ({"question": "q", "options": "a, b", "answer": "A"}, "'options' must be a list"),
        ({"question": "", "options": ["a", "b"], "answer": "A"}, "'question' is empty"),
        ({"instruction": "Pick: A. x, B. y", "output": "E"}, "answer 'E' is not one of A-B"),
        ({"instruction": "Pick: A. x, B. y", "output": "no idea"}, "'output' names no option"),
        ({"instruction": "Pick: A. x, B. y"}, "missing 'output'"),
        ({"instruction": "Say hi.", "output": "A"}, "'instruction' lists no options"),
        (
            {"prompt": "q", "completion": "A"},
            "missing 'question' \\(MMLU layout\\) or 'instruction'",
        ),
    ],
)
def test_load_errors_name_file_record_and_key(
    tmp_path: Path, record: dict[str, Any], message: str
) -> None:
    good = {"question": "q", "options": ["a", "b"], "answer": "A"}
    path = _write_jsonl(tmp_path / "mc.jsonl", [good, good, record])
    with pytest.raises(ConfigError, match=message) as error:
        load_mc_questions(path)
    text = str(error.value)
    assert text.startswith(f"{path}: record 3: ")
    assert "\n" not in text


def test_load_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "mc.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mc.jsonl: no questions"):
        load_mc_questions(path)


# ---------------------------------------------------------------------------------------------
# Scoring


@pytest.fixture(scope="module")
def chaotic(tiny_model_dir: Path) -> tuple[Any, Any]:
    """The tiny model with large random weights, so option scores differ by more than their
    length and any padding or position mistake changes them."""
    model, tokenizer = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model, tokenizer


QUESTIONS = [
    MCQuestion("What is 12 + 35?", ["47", "57", "46", "37"], 0, "math"),
    MCQuestion("Which word is a color?", ["quick", "blue", "fox"], 1, "words"),
    MCQuestion("Reverse: red green", ["green red", "red green"], 0, "words"),
    MCQuestion("Convert 3 km to meters.", ["3000", "300", "30", "3"], 0, "math"),
    MCQuestion("Sort: 5, 3, 9", ["3, 5, 9", "9, 5, 3", "5, 3, 9"], 0, "math"),
]


def _by_hand(model: Any, tokenizer: Any, question: MCQuestion, template: str) -> list[float]:
    """Each option's log-likelihood from a plain, unpadded forward pass of one row."""
    add_special_tokens = template != "chat"
    prompt = build_prompt(mc_example(question), template, tokenizer)
    prompt_ids = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    scores = []
    for index in range(len(question.options)):
        text = prompt + option_continuation(question, index)
        ids = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        assert ids[: len(prompt_ids)] == prompt_ids  # the prompt is a token prefix
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]  # (T, vocab)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        scores.append(
            sum(float(log_probs[t - 1, ids[t]]) for t in range(len(prompt_ids), len(ids)))
        )
    return scores


def test_prompt_lists_lettered_options() -> None:
    example = mc_example(QUESTIONS[1])
    assert example["instruction"] == (
        "Which word is a color?\nA. quick\nB. blue\nC. fox\n"
        "Answer with the letter of the correct option."
    )
    assert option_continuation(QUESTIONS[1], 2) == "C. fox"


@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_scores_equal_hand_computed_log_likelihoods(
    chaotic: tuple[Any, Any], template: str
) -> None:
    model, tokenizer = chaotic
    expected = [_by_hand(model, tokenizer, q, template) for q in QUESTIONS]
    # Label two questions with their most likely option and three with another one.
    best = [max(range(len(s)), key=s.__getitem__) for s in expected]
    questions = [
        MCQuestion(q.question, q.options, b if i < 2 else (b + 1) % len(q.options), q.subject)
        for i, (q, b) in enumerate(zip(QUESTIONS, best, strict=True))
    ]
    model.train()
    result = score_multiple_choice(model, tokenizer, questions, template, 4, autocast="none")
    assert model.training  # the caller's mode is restored
    model.eval()
    for prediction, scores, b in zip(result["predictions"], expected, best, strict=True):
        assert prediction["log_likelihoods"] == pytest.approx(scores, abs=1e-4)
        assert prediction["predicted"] == "ABCD"[b]
    assert result["num_questions"] == 5
    assert result["accuracy"] == pytest.approx(2 / 5)
    # math: questions 0 (right), 3, 4 (wrong); words: 1 (right), 2 (wrong).
    assert result["accuracy_by_subject"] == pytest.approx({"math": 1 / 3, "words": 1 / 2})
    assert [p["answer"] for p in result["predictions"]] == ["ABCD"[q.answer] for q in questions]
    assert [p["subject"] for p in result["predictions"]] == [q.subject for q in questions]


def test_batch_size_does_not_change_scores(chaotic: tuple[Any, Any]) -> None:
    model, tokenizer = chaotic
    one = score_multiple_choice(model, tokenizer, QUESTIONS, "alpaca", 1, autocast="none")
    four = score_multiple_choice(model, tokenizer, QUESTIONS, "alpaca", 4, autocast="none")
    for a, b in zip(one["predictions"], four["predictions"], strict=True):
        assert a["log_likelihoods"] == pytest.approx(b["log_likelihoods"], abs=1e-4)
        assert a["predicted"] == b["predicted"]
    assert one["accuracy"] == four["accuracy"]


def test_no_questions_is_an_error(chaotic: tuple[Any, Any]) -> None:
    model, tokenizer = chaotic
    with pytest.raises(ValueError, match="no questions"):
        score_multiple_choice(model, tokenizer, [], "alpaca", 4)
