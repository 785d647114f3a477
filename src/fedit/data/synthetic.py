"""The embedded synthetic instruction suite (``data.source: synthetic``): exact-answer tasks.

Every example has exactly one correct short answer (a number, a date, a word list), so accuracy is
scored by exact match after :func:`normalize_answer`, with no judge model. The tasks are chosen so
that the small default model is clearly below what a LoRA adapter reaches in a few hundred steps,
and so that an adapter trained on some categories does worse on the others (see docs/synthetic.md).

Example:
    examples = generate_synthetic(2000, seed=0)
    examples[0]  # {"instruction": ..., "input": ..., "output": ..., "category": "date_format"}
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable

from fedit.config import ConfigError
from fedit.types import Example

# Small, common, single-token-ish words keep the tasks about the operation, not about spelling.
WORDS = (
    "apple", "river", "stone", "cloud", "tiger", "bread", "chair", "green", "music", "ocean",
    "paper", "light", "horse", "garden", "silver", "window", "forest", "candle", "rabbit", "honey",
    "winter", "summer", "bottle", "planet", "yellow", "castle", "pencil", "mirror", "orange",
    "violin",
)  # fmt: skip
FIRST_NAMES = (
    "Alice", "Bruno", "Chen", "Dara", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas",
    "Kiara", "Liam", "Maya", "Nils", "Omar", "Priya", "Rosa", "Sven", "Tariq", "Yuki",
)  # fmt: skip
CITIES = (
    "Lyon", "Porto", "Osaka", "Lima", "Oslo", "Quito", "Cairo", "Perth", "Dublin", "Austin",
    "Seville", "Bergen", "Krakow", "Nairobi", "Toronto", "Hanoi", "Leeds", "Turin", "Graz", "Delhi",
)  # fmt: skip
COLORS = ("red", "blue", "green", "black", "white", "purple", "orange", "gray", "pink", "brown")
EMAIL_DOMAINS = (
    "example.com", "mail.org", "post.net", "inbox.io", "letters.dev", "acme.co",
    "school.edu", "city.gov", "studio.art", "farm.coop",
)  # fmt: skip

# (unit from, unit to, factor): whole-number factors so every answer is an integer.
UNIT_FACTORS = (
    ("kilometers", "meters", 1000),
    ("kilograms", "grams", 1000),
    ("liters", "milliliters", 1000),
    ("meters", "centimeters", 100),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
)

Generator = Callable[[random.Random], tuple[str, str, str]]  # rng -> (instruction, input, output)


def _arithmetic(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
        expression, answer = f"{a} + {b}", a + b
    else:
        a, b = max(a, b), min(a, b)
        expression, answer = f"{a} - {b}", a - b
    instruction = rng.choice(
        ("Compute the result.", "Calculate the value of this expression.", "Work out the answer.")
    )
    return instruction, expression, str(answer)


def _sort_numbers(rng: random.Random) -> tuple[str, str, str]:
    numbers = rng.sample(range(1, 100), rng.randint(4, 6))
    instruction = rng.choice(
        (
            "Sort these numbers in ascending order.",
            "Arrange the numbers from smallest to largest.",
            "List these numbers in increasing order.",
        )
    )
    return instruction, ", ".join(map(str, numbers)), ", ".join(map(str, sorted(numbers)))


def _unit_conversion(rng: random.Random) -> tuple[str, str, str]:
    source, target, factor = rng.choice(UNIT_FACTORS)
    amount = rng.randint(2, 12) if factor == 60 else rng.randint(2, 95)
    instruction = rng.choice(
        (
            f"Convert {amount} {source} to {target}. Answer with the number only.",
            f"How many {target} are in {amount} {source}?",
            f"Express {amount} {source} in {target}.",
        )
    )
    return instruction, "", str(amount * factor)


def _date_format(rng: random.Random) -> tuple[str, str, str]:
    year, month, day = rng.randint(1950, 2049), rng.randint(1, 12), rng.randint(1, 28)
    instruction = rng.choice(
        (
            "Rewrite this date in DD/MM/YYYY format.",
            "Convert the date from YYYY-MM-DD to DD/MM/YYYY.",
            "Reformat the date as day/month/year (DD/MM/YYYY).",
        )
    )
    return instruction, f"{year:04d}-{month:02d}-{day:02d}", f"{day:02d}/{month:02d}/{year:04d}"


def _json_field(rng: random.Random) -> tuple[str, str, str]:
    record = {
        "name": rng.choice(FIRST_NAMES),
        "age": rng.randint(18, 90),
        "city": rng.choice(CITIES),
        "color": rng.choice(COLORS),
        "id": rng.randint(100, 999),
    }
    keys = list(record)
    rng.shuffle(keys)
    record = {key: record[key] for key in keys}
    key = rng.choice(keys)
    instruction = rng.choice(
        (
            f'What is the value of "{key}" in this JSON object?',
            f'Extract the "{key}" field from the JSON.',
            f'Return the value stored under the key "{key}".',
        )
    )
    return instruction, json.dumps(record), str(record[key])


def _reverse_words(rng: random.Random) -> tuple[str, str, str]:
    words = rng.sample(WORDS, rng.randint(3, 5))
    instruction = rng.choice(
        (
            "Reverse the order of these words.",
            "List these words in reverse order.",
            "Write the words back to front, last word first.",
        )
    )
    return instruction, ", ".join(words), ", ".join(reversed(words))


def _min_max(rng: random.Random) -> tuple[str, str, str]:
    numbers = rng.sample(range(1, 1000), rng.randint(4, 7))
    if rng.random() < 0.5:
        instruction = rng.choice(
            ("What is the largest number in this list?", "Find the maximum of these numbers.")
        )
        answer = max(numbers)
    else:
        instruction = rng.choice(
            ("What is the smallest number in this list?", "Find the minimum of these numbers.")
        )
        answer = min(numbers)
    return instruction, ", ".join(map(str, numbers)), str(answer)


def _count_items(rng: random.Random) -> tuple[str, str, str]:
    # Repeats are allowed so the answer is the number of items, not of distinct words.
    items = [rng.choice(WORDS) for _ in range(rng.randint(3, 9))]
    instruction = rng.choice(
        (
            "How many items are in this list?",
            "Count the items in the list.",
            "How many words does this comma-separated list contain?",
        )
    )
    return instruction, ", ".join(items), str(len(items))


def _email_domain(rng: random.Random) -> tuple[str, str, str]:
    name = rng.choice(FIRST_NAMES).lower()
    local = rng.choice((name, f"{name}.{rng.choice(WORDS)}", f"{name}{rng.randint(1, 99)}"))
    domain = rng.choice(EMAIL_DOMAINS)
    instruction = rng.choice(
        (
            "What is the domain of this email address?",
            "Extract the domain name from the email address.",
            "Give the part of the email address after the @ sign.",
        )
    )
    return instruction, f"{local}@{domain}", domain


_GENERATORS: dict[str, Generator] = {
    "arithmetic": _arithmetic,
    "sort_numbers": _sort_numbers,
    "unit_conversion": _unit_conversion,
    "date_format": _date_format,
    "json_field": _json_field,
    "reverse_words": _reverse_words,
    "min_max": _min_max,
    "count_items": _count_items,
    "email_domain": _email_domain,
}

CATEGORIES: tuple[str, ...] = tuple(_GENERATORS)

_MAX_DRAWS = 50  # attempts at a fresh example before accepting a duplicate (tiny answer spaces)


def _resolve_categories(categories: list[str] | None) -> list[str]:
    if categories is None:
        return list(CATEGORIES)
    unknown = [name for name in categories if name not in _GENERATORS]
    if unknown or not categories:
        got = ", ".join(map(repr, unknown)) if unknown else "an empty list"
        raise ConfigError(
            f"data.synthetic.categories: unknown category {got}; "
            f"choose from {', '.join(CATEGORIES)}"
        )
    return list(dict.fromkeys(categories))  # keep order, drop repeats


def _category_examples(category: str, count: int, seed: int) -> list[Example]:
    # A per-category RNG keeps a category's examples the same whatever subset is selected.
    rng = random.Random(f"fedit-synthetic:{seed}:{category}")
    generate = _GENERATORS[category]
    seen: set[tuple[str, str]] = set()
    examples: list[Example] = []
    for _ in range(count):
        for _ in range(_MAX_DRAWS):
            instruction, input_text, output = generate(rng)
            if (instruction, input_text) not in seen:
                break
        seen.add((instruction, input_text))
        examples.append(
            {
                "instruction": instruction,
                "input": input_text,
                "output": output,
                "category": category,
            }
        )
    return examples


def generate_synthetic(
    num_examples: int, seed: int, categories: list[str] | None = None
) -> list[Example]:
    """Generate the synthetic suite, spread evenly over the categories and shuffled.

    Args:
        num_examples: Total examples; category counts differ by at most one.
        seed: Seed for every random choice; the same seed gives the same list.
        categories: Subset of :data:`CATEGORIES` (default: all of them).

    Returns:
        Examples with ``instruction``, ``input``, ``output`` and ``category`` keys.

    Raises:
        ConfigError: When ``num_examples`` is negative or a category name is unknown.
    """
    if num_examples < 0:
        raise ConfigError(f"data.synthetic.num_examples: must be >= 0, got {num_examples}")
    names = _resolve_categories(categories)
    base, extra = divmod(num_examples, len(names))
    examples: list[Example] = []
    for index, name in enumerate(names):
        examples += _category_examples(name, base + (index < extra), seed)
    random.Random(seed).shuffle(examples)
    return examples


_SPACE = re.compile(r"\s+")
_COMMA = re.compile(r"\s*,\s*")
_QUOTES = "\"'`"  # wrapping characters stripped once from an answer


def normalize_answer(text: str) -> str:
    """Canonical form of a short answer, for exact-match scoring.

    Takes the first non-empty line, strips whitespace, one pair of wrapping quotes or backticks
    and one trailing period, writes list separators as ``", "``, collapses runs of spaces and
    lower-cases. Nothing else is forgiven: ``"The answer is 47."`` stays different from ``"47"``.

    Args:
        text: A model's generation or a reference answer.

    Returns:
        The normalised answer (empty when ``text`` has no non-empty line).
    """
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(line) >= 2 and line[0] == line[-1] and line[0] in _QUOTES:
        line = line[1:-1].strip()
    if line.endswith("."):
        line = line[:-1].rstrip()
    line = _COMMA.sub(", ", line)
    return _SPACE.sub(" ", line).strip().casefold()


def score_answer(prediction: str, reference: str) -> bool:
    """Whether ``prediction`` matches ``reference`` exactly after :func:`normalize_answer`.

    Args:
        prediction: The model's generated text (only its first non-empty line counts).
        reference: The correct answer.

    Returns:
        True when both normalise to the same non-empty string.
    """
    expected = normalize_answer(reference)
    return bool(expected) and normalize_answer(prediction) == expected
