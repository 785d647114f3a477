"""GSM8K-style evaluation: a free-form answer is right when its final number equals the reference's.

The final number is the one after the last ``####`` (GSM8K's answer marker) or, without a marker,
the last number in the text. Thousands separators, ``$`` and a sentence's closing period are
ignored, and numbers are compared by value: ``"$1,234.50."`` and ``"1234.5"`` match.

Example:
    >>> extract_final_number("48/2 = <<48/2=24>>24 clips in May.\\n#### 72")
    '72'
    >>> numeric_match("The answer is $1,234.50.", "#### 1234.5")
    True

    examples = load_numeric_examples(Path("gsm8k_test.jsonl"))
    result = evaluate_numeric(model, tokenizer, examples, "alpaca", 256, 8)
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from torch import nn

from fedit.client.evaluate import answer_examples
from fedit.config import ConfigError
from fedit.data.sources import read_records
from fedit.types import Example

logger = logging.getLogger(__name__)

ANSWER_MARKER = "####"
MAX_ANSWER_CHARS = 500  # raw answer text kept per prediction

# An optional minus (not the hyphen of a range such as "3-5"), an optional "$" (which a minus may
# follow: "$-5"), then digits in "," thousands groups or plain digits, and an optional decimal
# part; or a bare decimal part (".5").
_NUMBER = re.compile(
    r"(?:(?<![\w)\]])-)?(?:\$-?)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|(?<![\d.])\.\d+"
)


def _canonical(number: str) -> str | None:
    """``"-$1,234.50"`` -> ``"-1234.5"``, ``"42.00"`` -> ``"42"``; None if not a number."""
    cleaned = number.replace(",", "").replace("$", "")
    if cleaned.count("-") > 1:
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_final_number(text: str) -> str | None:
    """The answer's final number in canonical form, or None when there is none.

    Args:
        text: A generated answer or a GSM8K reference.

    Returns:
        With ``####`` in the text, the first number after the last ``####``; otherwise the last
        number in the text. Canonical: no separators or ``$``, no trailing zeros after the
        decimal point (``"42.0"`` -> ``"42"``, ``"3.50"`` -> ``"3.5"``, ``"-3"`` stays).
    """
    if ANSWER_MARKER in text:
        numbers = _NUMBER.findall(text.rsplit(ANSWER_MARKER, 1)[1])[:1]
    else:
        numbers = _NUMBER.findall(text)[-1:]
    return _canonical(numbers[0]) if numbers else None


def numeric_match(prediction: str, reference: str) -> bool:
    """True when both texts have a final number and the two are equal."""
    expected = extract_final_number(reference)
    return expected is not None and extract_final_number(prediction) == expected


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _record_example(record: dict[str, Any], number: int, path: Path) -> Example:
    """One GSM8K (question / answer) or Alpaca (instruction / input / output) record."""
    if "question" in record and "answer" in record:
        fields = (record["question"], None, record["answer"])
    elif "instruction" in record and "output" in record:
        fields = (record["instruction"], record.get("input"), record["output"])
    else:
        raise ConfigError(
            f"{path}: record {number}: expected 'question' and 'answer' (GSM8K) or "
            f"'instruction' and 'output' (Alpaca); got keys {sorted(record)}"
        )
    instruction, input_text, output = (_text(value) for value in fields)
    if extract_final_number(output) is None:
        shown = output if len(output) <= 60 else output[:57] + "..."
        raise ConfigError(f"{path}: record {number}: the reference has no number: {shown!r}")
    category = _text(record.get("category") or record.get("subject")) or path.stem
    return {
        "instruction": instruction,
        "input": input_text,
        "output": output,
        "category": category,
    }


def load_numeric_examples(path: Path) -> list[Example]:
    """Read word problems with numeric answers from a JSON or JSONL file.

    Args:
        path: GSM8K records ``{"question", "answer": "... #### 42"}`` or Alpaca records
            ``{"instruction", "input"?, "output"}``; the category is the record's ``category``
            or ``subject``, else the file's stem.

    Returns:
        One example per record; ``output`` is the full reference text.

    Raises:
        ConfigError: An unreadable or empty file, or a record with neither layout or without a
            number in its reference, naming the file and the record (counted from 1).
    """
    records = read_records(path, key=str(path))
    if not records:
        raise ConfigError(f"{path}: no records")
    examples = [_record_example(record, n, path) for n, record in enumerate(records, start=1)]
    logger.info("%s: %d numeric examples", path, len(examples))
    return examples


def evaluate_numeric(
    model: nn.Module,
    tokenizer: Any,
    examples: list[Example],
    template: str,
    max_new_tokens: int,
    batch_size: int,
    autocast: str = "auto",
) -> dict[str, Any]:
    """Generate a greedy answer per example and compare its final number with the reference's.

    Args:
        model: Any causal LM (base or peft).
        tokenizer: Its tokenizer.
        examples: Problems whose ``output`` contains the reference number.
        template: ``data.template`` (alpaca or chat), used to build the prompts.
        max_new_tokens: Generation budget per example (reasoning chains need a few hundred).
        batch_size: Prompts per ``generate`` call.
        autocast: As ``train.autocast``.

    Returns:
        ``accuracy``, ``num_examples``, ``accuracy_by_category``, ``no_number`` (answers without
        any number) and ``predictions``: per example the extracted ``reference`` and
        ``prediction`` (None without a number) and the raw ``answer`` (first 500 characters).

    Raises:
        ValueError: No examples, or an example whose output has no number.
    """
    if not examples:
        raise ValueError("evaluate_numeric: got no examples")
    references = [extract_final_number(example["output"]) for example in examples]
    if None in references:
        index = references.index(None)
        raise ValueError(f"evaluate_numeric: example {index}'s output has no number")
    answers = answer_examples(
        model, tokenizer, examples, template, max_new_tokens, batch_size, autocast
    )
    correct: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    predictions = []
    for example, reference, answer in zip(examples, references, answers, strict=True):
        predicted = extract_final_number(answer)
        category = example.get("category", "")
        counts[category] += 1
        correct[category] += predicted == reference
        predictions.append(
            {"reference": reference, "prediction": predicted, "answer": answer[:MAX_ANSWER_CHARS]}
        )
    return {
        "accuracy": sum(correct.values()) / len(examples),
        "num_examples": len(examples),
        "accuracy_by_category": {c: correct[c] / counts[c] for c in sorted(counts)},
        "no_number": sum(p["prediction"] is None for p in predictions),
        "predictions": predictions,
    }
