"""Instruction data sources: the synthetic suite, local files and folders, and hub datasets.

Every source ends up as a list of ``Example`` dicts with exactly the str keys ``instruction``,
``input``, ``output`` and ``category``. Columns are mapped by ``data.columns`` or detected from the
Dolly (instruction, context, response, category) and Alpaca (instruction, input, output) schemas.

Example:
    examples = load_examples(cfg.data, seed=cfg.seed)
    test_examples = load_test_examples(cfg.data, seed=cfg.seed)  # None without data.test_source
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedit.config import ColumnsConfig, ConfigError, DataConfig
from fedit.types import Example

logger = logging.getLogger(__name__)

FIELDS = ("instruction", "input", "output", "category")
REQUIRED_FIELDS = ("instruction", "output")
DEFAULT_CATEGORY = "default"

# Column names tried, in order, for each field when data.columns leaves it empty.
AUTO_COLUMNS: dict[str, tuple[str, ...]] = {
    "instruction": ("instruction",),
    "input": ("input", "context"),
    "output": ("output", "response"),
    "category": ("category",),
}

# "name" or "owner/name", as the hub spells dataset ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_MAX_REASON = 200

Record = dict[str, Any]


def load_examples(data: DataConfig, seed: int, preference: bool = False) -> list[Example]:
    """Load and normalise the training examples named by ``data.source``.

    Args:
        data: The data section of the config.
        seed: Seeds the synthetic generator and the shuffle behind ``data.max_examples``.
        preference: Read preference pairs (``data/preference.py``) instead of instructions.

    Returns:
        The normalised examples (shuffled and cut to ``data.max_examples`` when that is set).

    Raises:
        ConfigError: The source cannot be found or read, a required column is missing, or it
            holds no examples.
    """
    if data.source == "synthetic":
        examples = _synthetic(data, seed, preference)
    else:
        examples = load_source(data.source, "data.source", "train", data, preference)
    if data.max_examples is not None:
        order = np.random.default_rng(seed).permutation(len(examples))
        examples = [examples[i] for i in order[: data.max_examples]]
    logger.info("loaded %d examples from %s", len(examples), data.source)
    return examples


def load_test_examples(
    data: DataConfig, seed: int, preference: bool = False
) -> list[Example] | None:
    """Load the separate test set named by ``data.test_source``, or None when it is unset.

    A folder given as ``data.test_source`` is read from its ``test.*`` file. ``data.max_examples``
    does not apply to the test set.

    Args:
        data: The data section of the config.
        seed: Seeds the synthetic generator when ``data.test_source`` is ``synthetic``.

    Returns:
        The normalised test examples, or None.
    """
    if data.test_source is None:
        return None
    if data.test_source == "synthetic":
        return _synthetic(data, seed, preference)
    examples = load_source(data.test_source, "data.test_source", "test", data, preference)
    logger.info("loaded %d test examples from %s", len(examples), data.test_source)
    return examples


def _synthetic(data: DataConfig, seed: int, preference: bool) -> list[Example]:
    from fedit.data.synthetic import generate_synthetic
    from fedit.data.synthetic_pairs import generate_synthetic_pairs

    generate = generate_synthetic_pairs if preference else generate_synthetic
    records = generate(data.synthetic.num_examples, seed=seed, categories=data.synthetic.categories)
    if preference:
        return records
    return normalize_records(records, ColumnsConfig(), "the synthetic suite")


def load_source(
    source: str, key: str, folder_split: str, data: DataConfig, preference: bool = False
) -> list[Example]:
    """Read a local file, a folder (its ``folder_split``.* file) or a hub dataset."""
    path = Path(source).expanduser()
    if path.exists():
        if path.is_dir():
            path = _find_split_file(path, folder_split, key)
        records = read_records(path, key)
        origin = str(path)
    elif _looks_like_path(source):
        raise ConfigError(f"{key}: file not found: {source}")
    else:
        records = _load_hub(source, key, data)
        origin = f"hub dataset {source!r}"
    if preference:
        from fedit.data.preference import normalize_preference_records

        examples = normalize_preference_records(records, data.columns, origin)
    else:
        examples = normalize_records(records, data.columns, origin)
    if not examples:
        raise ConfigError(f"{key}: {origin} holds no examples")
    _check_responses(examples, key, origin)
    return examples


def _check_responses(examples: list[Example], key: str, origin: str) -> None:
    """Refuse a source whose responses are all empty (the model would learn to say nothing, or
    be scored against nothing), and count the empty ones otherwise."""
    empty = sum(not example["output"].strip() for example in examples)
    if empty == len(examples):
        raise ConfigError(
            f"{key}: every response in {origin} is empty ({empty} examples); point "
            "data.columns.output at the column that holds the answers"
        )
    if empty:
        logger.warning(
            "%s: %d of %d examples in %s have an empty response; they teach the model to "
            "answer nothing",
            key,
            empty,
            len(examples),
            origin,
        )


def is_hub_source(source: str) -> bool:
    """Whether ``load_source`` would read ``source`` from the dataset hub (no local file)."""
    local = source == "synthetic" or Path(source).expanduser().exists()
    return not local and not _looks_like_path(source)


def _looks_like_path(source: str) -> bool:
    if Path(source).suffix.lower() in READERS:
        return True
    if source.startswith((".", "~", "/")) or (os.sep != "/" and os.sep in source):
        return True
    return _HUB_ID.match(source) is None


def _find_split_file(folder: Path, split: str, key: str) -> Path:
    candidates = [folder / f"{split}{ext}" for ext in READERS]
    found = [path for path in candidates if path.is_file()]
    if not found:
        listing = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        wanted = "/".join(f"{split}{ext}" for ext in READERS)
        raise ConfigError(f"{key}: folder {folder} has no {wanted}; found: {listing}")
    if len(found) > 1:
        logger.warning("%s holds %s; reading %s", folder, [p.name for p in found], found[0].name)
    return found[0]


def _load_hub(source: str, key: str, data: DataConfig) -> list[Record]:
    """Read one split of a hub dataset with ``datasets.load_dataset``."""
    import datasets

    try:
        dataset = datasets.load_dataset(source, data.subset, split=data.split)
        return [dict(row) for row in dataset]
    except Exception as err:  # noqa: BLE001 - datasets raises many types; the reason is reported
        reason = _shorten(f"{type(err).__name__}: {err}")
        raise ConfigError(
            f"{key}: could not load hub dataset {source!r} (offline or not found): {reason}"
        ) from err


def _shorten(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 3] + "..."


def read_records(path: Path, key: str = "data.source") -> list[Record]:
    """Read the raw records of a .json, .jsonl, .csv or .parquet file.

    Args:
        path: The file to read; its extension picks the reader.
        key: The config key to name in errors.

    Returns:
        One dict per record, with the file's own column names.
    """
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        known = ", ".join(READERS)
        raise ConfigError(f"{key}: {path}: unsupported file type; use one of {known}")
    return reader(path)


def _read_text(path: Path) -> str:
    """The file as UTF-8 text (a byte-order mark is allowed), or an error naming the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the file as UTF-8"
        ) from None


def _read_json(path: Path) -> list[Record]:
    """A JSON array of records, or JSON-lines content in a .json file."""
    text = _read_text(path)
    try:
        content = json.loads(text)
    except json.JSONDecodeError as err:
        if _first_line_is_object(text):
            return _parse_json_lines(text, path)
        raise ConfigError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from None
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        raise ConfigError(f"{path}: expected a JSON array of records, got {type(content).__name__}")
    return _check_objects(content, path)


def _first_line_is_object(text: str) -> bool:
    first = next((line for line in text.splitlines() if line.strip()), "")
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _read_jsonl(path: Path) -> list[Record]:
    return _parse_json_lines(_read_text(path), path)


def _parse_json_lines(text: str, path: Path) -> list[Record]:
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{lineno}: malformed JSON line ({err.msg})") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{path}:{lineno}: expected a JSON object per line")
        records.append(record)
    return records


def _check_objects(records: list[Any], path: Path) -> list[Record]:
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            kind = type(record).__name__
            raise ConfigError(f"{path}: record {number} is a {kind}, expected an object")
    return records


def _read_csv(path: Path) -> list[Record]:
    import pandas as pd

    try:
        # Everything as text, and empty cells as "" rather than NaN.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return []
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: malformed CSV ({_shorten(str(err))})") from None
    return frame.to_dict(orient="records")


def _read_parquet(path: Path) -> list[Record]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - pyarrow's errors vary; report the reason
        raise ConfigError(f"{path}: unreadable parquet file ({_shorten(str(err))})") from None
    return frame.to_dict(orient="records")


READERS: dict[str, Callable[[Path], list[Record]]] = {
    ".json": _read_json,
    ".jsonl": _read_jsonl,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}


def resolve_columns(available: list[str], columns: ColumnsConfig, origin: str) -> dict[str, str]:
    """Map each field onto a source column: explicit ``data.columns`` first, then auto-detection.

    Args:
        available: The source's column names.
        columns: The explicit mapping (None fields are auto-detected).
        origin: The file or dataset, for error messages.

    Returns:
        Field name -> source column, for every field that has one.

    Raises:
        ConfigError: Listing every explicit column that is absent and every required field
            (instruction, output) without a column.
    """
    found = ", ".join(available) or "none"
    mapping: dict[str, str] = {}
    problems = []
    for name in FIELDS:
        explicit = getattr(columns, name)
        if explicit:
            if explicit in available:
                mapping[name] = explicit
            else:
                problems.append(
                    f"data.columns.{name}: column {explicit!r} not found in {origin}; "
                    f"columns found: {found}"
                )
            continue
        detected = next((col for col in AUTO_COLUMNS[name] if col in available), None)
        if detected is not None:
            mapping[name] = detected
        elif name in REQUIRED_FIELDS:
            tried = ", ".join(repr(col) for col in AUTO_COLUMNS[name])
            problems.append(
                f"data.columns.{name}: no column for {name} in {origin} (tried {tried}); "
                f"columns found: {found}; set data.columns.{name}"
            )
    if problems:
        raise ConfigError(problems)
    return mapping


def normalize_records(records: list[Record], columns: ColumnsConfig, origin: str) -> list[Example]:
    """Turn raw records into Examples with str instruction / input / output / category.

    Missing or null values become ""; a missing or empty category becomes "default". Values that
    are not strings (numbers, say) are converted with ``str``.

    Args:
        records: Raw records from a file or dataset.
        columns: The explicit column mapping from ``data.columns``.
        origin: The file or dataset, for error messages.
    """
    if not records:
        return []
    available = list(dict.fromkeys(col for record in records for col in record))
    mapping = resolve_columns(available, columns, origin)
    examples = []
    for record in records:
        example = {name: _to_str(record.get(col)) for name, col in mapping.items()}
        example.setdefault("input", "")
        if not example.get("category"):
            example["category"] = DEFAULT_CATEGORY
        examples.append({name: example[name] for name in FIELDS})
    return examples


def _to_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return ""
    if type(value).__name__ == "NAType":  # pandas.NA, without importing pandas here
        return ""
    return str(value)
