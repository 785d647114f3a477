"""GSM8K-style numeric answers: extraction by hand, file loading and its errors, scoring."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedit.config import ConfigError, ModelConfig
from fedit.evaluation.numeric import (
    evaluate_numeric,
    extract_final_number,
    load_numeric_examples,
    numeric_match,
)
from fedit.model import load_model

GSM8K_ANSWER = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GSM8K_ANSWER, "72"),
        ("The answer is $1,234.50.", "1234.5"),
        ("no number here", None),
        ("", None),
        ("42.0", "42"),
        ("42.00", "42"),
        ("It is -3 degrees", "-3"),
        ("3.5 cups", "3.5"),
        ("1,000,000 apples", "1000000"),
        ("first 7 then 9 #### 12 more 5", "12"),  # the number right after the last ####
        ("#### 1 and then #### -4", "-4"),
        ("#### no number", None),
        ("pages 3-5", "5"),  # a range, not minus five
        ("a loss of -$5", "-5"),
        ("We had 5, 3, 9", "9"),  # a list is not a thousands separator
        ("half is .5", "0.5"),
    ],
)
def test_extract_final_number(text: str, expected: str | None) -> None:
    assert extract_final_number(text) == expected


def test_numeric_match() -> None:
    assert numeric_match("So she sold 72.", GSM8K_ANSWER)
    assert numeric_match("72.00", "#### 72")
    assert not numeric_match("So she sold 71.", GSM8K_ANSWER)
    assert not numeric_match("I don't know", GSM8K_ANSWER)
    assert not numeric_match("72", "no number")  # a reference without a number never matches


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def test_load_gsm8k_and_alpaca_records(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "gsm.jsonl",
        [
            {"question": "How many clips?", "answer": GSM8K_ANSWER},
            {"instruction": "Add.", "input": "2 + 3", "output": "5", "category": "add"},
            {"instruction": "Count.", "output": 7, "subject": "count"},  # a JSON number
        ],
    )
    examples = load_numeric_examples(path)
    assert examples == [
        {"instruction": "How many clips?", "input": "", "output": GSM8K_ANSWER, "category": "gsm"},
        {"instruction": "Add.", "input": "2 + 3", "output": "5", "category": "add"},
        {"instruction": "Count.", "input": "", "output": "7", "category": "count"},
    ]


def test_load_reads_a_json_array(tmp_path: Path) -> None:
    path = tmp_path / "problems.json"
    path.write_text(json.dumps([{"question": "q", "answer": "#### 3"}]), encoding="utf-8")
    assert load_numeric_examples(path)[0]["category"] == "problems"


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (
            [{"question": "q", "answer": "#### 1"}, {"prompt": "q"}],
            r"record 2: expected 'question'",
        ),
        ([{"question": "q", "answer": "about ten"}], r"record 1: the reference has no number"),
        ([], r"no records"),
    ],
)
def test_load_errors_name_file_and_record(
    tmp_path: Path, records: list[dict[str, Any]], message: str
) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(ConfigError, match=message) as error:
        load_numeric_examples(path)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


EXAMPLES = [
    {"instruction": "q1", "input": "", "output": "#### 72", "category": "a"},
    {"instruction": "q2", "input": "", "output": "#### 1,000", "category": "a"},
    {"instruction": "q3", "input": "", "output": "#### 3.5", "category": "b"},
    {"instruction": "q4", "input": "", "output": "#### -2", "category": "b"},
]


def test_evaluate_numeric_scores_the_final_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {
        "q1": "She sold 72 clips.",  # right
        "q2": "That makes $1000.00.",  # right: same value
        "q3": "I cannot tell.",  # no number
        "q4": "It is 2",  # wrong sign
    }
    seen: dict[str, Any] = {}

    def fake_generate(model, tokenizer, prompts, max_new_tokens, batch_size, **kwargs):
        seen.update(prompts=prompts, kwargs=kwargs, max_new_tokens=max_new_tokens)
        return [next(v for k, v in answers.items() if f"\n{k}\n" in p) for p in prompts]

    monkeypatch.setattr("fedit.client.evaluate.generate_answers", fake_generate)
    result = evaluate_numeric(None, None, EXAMPLES, "alpaca", 64, 2)
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["accuracy_by_category"] == {"a": 1.0, "b": 0.0}
    assert result["num_examples"] == 4
    assert result["no_number"] == 1
    assert [p["reference"] for p in result["predictions"]] == ["72", "1000", "3.5", "-2"]
    assert [p["prediction"] for p in result["predictions"]] == ["72", "1000", None, "2"]
    assert result["predictions"][1]["answer"] == "That makes $1000.00."
    assert seen["prompts"][0].startswith("Below is an instruction")
    assert seen["kwargs"]["add_special_tokens"] is True
    assert seen["max_new_tokens"] == 64


def test_evaluate_numeric_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no examples"):
        evaluate_numeric(None, None, [], "alpaca", 8, 2)
    bad = [{"instruction": "q", "input": "", "output": "none", "category": "a"}]
    with pytest.raises(ValueError, match="example 0"):
        evaluate_numeric(None, None, bad, "alpaca", 8, 2)


def test_evaluate_numeric_on_the_tiny_model(tiny_model_dir: Path) -> None:
    model, tokenizer = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    result = evaluate_numeric(model, tokenizer, EXAMPLES, "chat", 6, 3, autocast="none")
    assert set(result) == {
        "accuracy",
        "num_examples",
        "accuracy_by_category",
        "no_number",
        "predictions",
    }
    assert result["num_examples"] == 4
    assert set(result["accuracy_by_category"]) == {"a", "b"}
    assert len(result["predictions"]) == 4
    for prediction in result["predictions"]:
        assert prediction["prediction"] == extract_final_number(prediction["answer"])
        assert len(prediction["answer"]) <= 500
    hits = sum(p["prediction"] == p["reference"] for p in result["predictions"])
    assert result["accuracy"] == hits / 4
    assert result["no_number"] == sum(p["prediction"] is None for p in result["predictions"])
