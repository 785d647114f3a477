"""Preference pairs on the synthetic suite: the correct answer against a plausible wrong one.

Each instruction of ``data/synthetic.py`` gets a rejected answer made by the mistake a model
plausibly makes on that task (an off-by-one sum, the wrong sort order, the wrong extreme, a
wrong domain ...). The chosen answer is the reference, so the exact-answer scorer still applies.

Example:
    pairs = generate_synthetic_pairs(900, seed=42)
    pairs[0]["output"], pairs[0]["rejected"]  # ("47", "48")
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from fedit.data.synthetic import EMAIL_DOMAINS, generate_synthetic
from fedit.types import Example

Mistake = Callable[[Example, random.Random], str]  # (example, rng) -> a wrong answer


def _off_by_small(example: Example, rng: random.Random) -> str:
    answer = int(example["output"])
    return str(answer + rng.choice((-1, 1, -10, 10)))


def _sort_mistake(example: Example, rng: random.Random) -> str:
    numbers = example["output"].split(", ")
    if rng.random() < 0.5:
        return ", ".join(reversed(numbers))  # descending instead of ascending
    i = rng.randrange(len(numbers) - 1)
    numbers[i], numbers[i + 1] = numbers[i + 1], numbers[i]  # two neighbours swapped
    return ", ".join(numbers)


def _wrong_factor(example: Example, rng: random.Random) -> str:
    answer = int(example["output"])
    return str(answer // 10 if rng.random() < 0.5 else answer * 10)


def _date_mistake(example: Example, rng: random.Random) -> str:
    day, month, year = example["output"].split("/")
    if day != month and rng.random() < 0.7:
        return f"{month}/{day}/{year}"  # US order
    return f"{day}/{month}/{int(year) + rng.choice((-1, 1)):04d}"


def _other_field(example: Example, rng: random.Random) -> str:
    record = json.loads(example["input"])
    others = [str(value) for value in record.values() if str(value) != example["output"]]
    return rng.choice(others)


def _original_order(example: Example, rng: random.Random) -> str:
    del rng
    return example["input"]


def _other_extreme(example: Example, rng: random.Random) -> str:
    numbers = sorted(int(n) for n in example["input"].split(", "))
    answer = int(example["output"])
    if rng.random() < 0.5:
        return str(numbers[-1] if answer == numbers[0] else numbers[0])  # max instead of min
    second = numbers[1] if answer == numbers[0] else numbers[-2]  # the runner-up
    return str(second)


def _off_by_one(example: Example, rng: random.Random) -> str:
    return str(int(example["output"]) + rng.choice((-1, 1)))


def _wrong_domain(example: Example, rng: random.Random) -> str:
    if rng.random() < 0.3:
        return example["input"]  # the whole address
    return rng.choice([domain for domain in EMAIL_DOMAINS if domain != example["output"]])


MISTAKES: dict[str, Mistake] = {
    "arithmetic": _off_by_small,
    "sort_numbers": _sort_mistake,
    "unit_conversion": _wrong_factor,
    "date_format": _date_mistake,
    "json_field": _other_field,
    "reverse_words": _original_order,
    "min_max": _other_extreme,
    "count_items": _off_by_one,
    "email_domain": _wrong_domain,
}


def generate_synthetic_pairs(
    num_examples: int, seed: int, categories: list[str] | None = None
) -> list[Example]:
    """The synthetic suite (same instructions as ``generate_synthetic``) with a rejected answer.

    Returns:
        Examples with the instruction keys plus ``rejected`` (never equal to ``output``) and
        ``messages`` (always "", the prompts are single instructions).
    """
    pairs = []
    for index, example in enumerate(generate_synthetic(num_examples, seed, categories)):
        rng = random.Random(f"fedit-synthetic-pairs:{seed}:{index}")
        rejected = MISTAKES[example["category"]](example, rng)
        if rejected == example["output"]:  # e.g. a one-word reversal; never reject the truth
            rejected = example["output"] + " " + example["output"]
        pairs.append({**example, "rejected": rejected, "messages": ""})
    return pairs
