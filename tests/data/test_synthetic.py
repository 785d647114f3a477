"""Tests for the synthetic suite: determinism, balance, correct answers, and answer scoring."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import date

import pytest

from fedit.config import ConfigError
from fedit.data.synthetic import (
    CATEGORIES,
    UNIT_FACTORS,
    generate_synthetic,
    normalize_answer,
    score_answer,
)


@pytest.fixture(scope="module")
def examples() -> list[dict[str, str]]:
    return generate_synthetic(60 * len(CATEGORIES), seed=7)


def _of(examples: list[dict[str, str]], category: str) -> list[dict[str, str]]:
    found = [example for example in examples if example["category"] == category]
    assert found, category
    return found


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(", ")]


def test_same_seed_same_examples_and_different_seed_differs() -> None:
    assert generate_synthetic(50, seed=3) == generate_synthetic(50, seed=3)
    assert generate_synthetic(50, seed=3) != generate_synthetic(50, seed=4)


def test_does_not_touch_the_global_rng() -> None:
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    generate_synthetic(20, seed=0)
    assert random.random() == expected


def test_at_least_eight_categories_all_generated() -> None:
    assert len(CATEGORIES) >= 8
    assert len(set(CATEGORIES)) == len(CATEGORIES)
    assert set(example["category"] for example in generate_synthetic(100, seed=0)) == set(
        CATEGORIES
    )


@pytest.mark.parametrize("num_examples", [0, 1, 17, 100, 101])
def test_spread_evenly_over_categories(num_examples: int) -> None:
    generated = generate_synthetic(num_examples, seed=0)
    assert len(generated) == num_examples
    counts = Counter(example["category"] for example in generated)
    if num_examples >= len(CATEGORIES):
        assert max(counts.values()) - min(counts.values()) <= 1


def test_order_is_interleaved(examples: list[dict[str, str]]) -> None:
    first = [example["category"] for example in examples[: 3 * len(CATEGORIES)]]
    assert len(set(first)) > len(CATEGORIES) // 2


def test_every_example_is_well_formed(examples: list[dict[str, str]]) -> None:
    for example in examples:
        assert set(example) == {"instruction", "input", "output", "category"}
        assert all(isinstance(value, str) for value in example.values())
        assert example["instruction"].strip() and example["output"].strip()
        assert "\n" not in example["output"]
        assert normalize_answer(example["output"]) == example["output"].casefold()


def test_instruction_phrasing_varies(examples: list[dict[str, str]]) -> None:
    for category in CATEGORIES:
        assert len({e["instruction"] for e in _of(examples, category)}) >= 2, category


def test_examples_are_mostly_unique(examples: list[dict[str, str]]) -> None:
    keys = [(e["instruction"], e["input"]) for e in examples]
    assert len(set(keys)) == len(keys)


def test_arithmetic_answers(examples: list[dict[str, str]]) -> None:
    for example in _of(examples, "arithmetic"):
        left, operator, right = example["input"].split()
        expected = int(left) + int(right) if operator == "+" else int(left) - int(right)
        assert example["output"] == str(expected)
        assert expected >= 0


def test_sorting_answers(examples: list[dict[str, str]]) -> None:
    for example in _of(examples, "sort_numbers"):
        assert _numbers(example["output"]) == sorted(_numbers(example["input"]))


def test_unit_conversion_answers(examples: list[dict[str, str]]) -> None:
    factors = {(source, target): factor for source, target, factor in UNIT_FACTORS}
    pattern = re.compile(r"(\d+) (\w+) (?:to|in) (\w+)|many (\w+) are in (\d+) (\w+)")
    for example in _of(examples, "unit_conversion"):
        match = pattern.search(example["instruction"])
        assert match, example["instruction"]
        if match.group(1):
            amount, source, target = match.group(1, 2, 3)
        else:
            target, amount, source = match.group(4, 5, 6)
        assert example["output"] == str(int(amount) * factors[(source, target)])


def test_date_answers(examples: list[dict[str, str]]) -> None:
    for example in _of(examples, "date_format"):
        parsed = date.fromisoformat(example["input"])
        assert example["output"] == parsed.strftime("%d/%m/%Y")


def test_json_answers(examples: list[dict[str, str]]) -> None:
    for example in _of(examples, "json_field"):
        (key,) = re.findall(r'"(\w+)"', example["instruction"])
        assert example["output"] == str(json.loads(example["input"])[key])


def test_list_answers(examples: list[dict[str, str]]) -> None:
    for example in _of(examples, "reverse_words"):
        assert example["output"].split(", ") == example["input"].split(", ")[::-1]
    for example in _of(examples, "count_items"):
        assert example["output"] == str(len(example["input"].split(", ")))
    for example in _of(examples, "min_max"):
        pick = (
            max
            if "largest" in example["instruction"] or "maximum" in example["instruction"]
            else min
        )
        assert example["output"] == str(pick(_numbers(example["input"])))
    for example in _of(examples, "email_domain"):
        assert example["output"] == example["input"].split("@")[1]


def test_category_subset_selection() -> None:
    subset = generate_synthetic(10, seed=0, categories=["date_format", "arithmetic"])
    assert Counter(example["category"] for example in subset) == {
        "date_format": 5,
        "arithmetic": 5,
    }


def test_category_examples_do_not_depend_on_the_subset() -> None:
    alone = generate_synthetic(5, seed=2, categories=["json_field"])
    mixed = generate_synthetic(5 * len(CATEGORIES), seed=2)
    assert sorted(map(str, alone)) == sorted(map(str, _of(mixed, "json_field")))


@pytest.mark.parametrize("categories", [["arithmetic", "poetry"], []])
def test_unknown_or_empty_categories_are_config_errors(categories: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        generate_synthetic(10, seed=0, categories=categories)
    message = str(error.value)
    assert "data.synthetic.categories" in message
    assert all(name in message for name in CATEGORIES)
    if categories:
        assert "'poetry'" in message


def test_negative_count_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="data.synthetic.num_examples"):
        generate_synthetic(-1, seed=0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  47  ", "47"),
        ("47.", "47"),
        ("\n\n47\nbecause 40 + 7", "47"),
        ("Lyon", "lyon"),
        ("3,  7 ,19", "3, 7, 19"),
        ('"acme.co"', "acme.co"),
        ("`09/01/2004`", "09/01/2004"),
        ("3.5", "3.5"),
        ("blue   green  red.", "blue green red"),
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("47", "47", True),
        (" 47.\nExplanation follows", "47", True),
        ("lyon", "Lyon", True),
        ("7,19,42", "7, 19, 42", True),
        ("The answer is 47.", "47", False),
        ("470", "47", False),
        ("42, 19, 7", "7, 19, 42", False),
        ("9/1/2004", "09/01/2004", False),
        ("", "47", False),
        ("", "", False),
    ],
)
def test_score_answer(prediction: str, reference: str, expected: bool) -> None:
    assert score_answer(prediction, reference) is expected
