"""Preference pairs: detect the three common formats, normalise, and tokenize chosen / rejected.

Every preference source ends up as ``Example`` dicts with the instruction keys (``instruction``,
``input``, ``output`` = the chosen answer, ``category``) plus ``rejected`` and ``messages``: the
prompt's chat messages as JSON when the prompt is a conversation, "" otherwise. So the test
hold-out, every partitioner and the exact-answer scorer work on pairs as on instructions.

Formats, detected from the columns and the values:

- ``prompt`` / ``chosen`` / ``rejected`` strings (``instruction`` / ``input`` may stand for
  ``prompt``); TRL's conversational form, where ``prompt`` is a message list and ``chosen`` /
  ``rejected`` are one-message assistant lists, is read as well.
- Anthropic HH-RLHF: ``chosen`` and ``rejected`` are whole dialogues
  (``\\n\\nHuman: ... \\n\\nAssistant: ...``) that share everything up to the last
  ``Assistant:`` turn.
- UltraFeedback-binarized: ``chosen`` and ``rejected`` are message lists ending in the
  assistant's answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from fedit.config import ColumnsConfig, ConfigError
from fedit.data.templates import IGNORE_INDEX, TokenizedExample, chat_prompt, tokenize_example
from fedit.types import Example

Record = dict[str, Any]  # one raw row, as data/sources reads it
DEFAULT_CATEGORY = "default"  # as for instructions (data/sources.py); sources imports this module
PREFERENCE_FIELDS = ("instruction", "input", "output", "rejected", "category", "messages")
FORMATS_HINT = (
    "preference data needs prompt/chosen/rejected columns, HH-RLHF chosen/rejected dialogues, "
    "or UltraFeedback chosen/rejected message lists"
)
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def normalize_preference_records(
    records: list[Record], columns: ColumnsConfig, origin: str
) -> list[Example]:
    """Turn raw preference records into Examples with ``rejected`` and ``messages``.

    Raises:
        ConfigError: A needed column is missing (named), or a record does not fit its format.
    """
    if not records:
        return []
    available = list(dict.fromkeys(col for record in records for col in record))
    found = ", ".join(available) or "none"
    for column in ("chosen", "rejected"):
        if column not in available:
            raise ConfigError(
                f"data.source: no column {column!r} in {origin}; {FORMATS_HINT}; "
                f"columns found: {found}"
            )
    category = columns.category or ("category" if "category" in available else None)
    if columns.category and columns.category not in available:
        raise ConfigError(
            f"data.columns.category: column {columns.category!r} not found in {origin}; "
            f"columns found: {found}"
        )
    prompt_column = columns.instruction or next(
        (name for name in ("prompt", "instruction") if name in available), None
    )
    examples = []
    for number, record in enumerate(records, start=1):
        where = f"{origin}: record {number}"
        example = _parse_record(record, prompt_column, where)
        example["category"] = _text(record.get(category)) if category else ""
        example["category"] = example["category"] or DEFAULT_CATEGORY
        examples.append({name: example.get(name, "") for name in PREFERENCE_FIELDS})
    return examples


def _parse_record(record: Record, prompt_column: str | None, where: str) -> dict[str, str]:
    chosen, rejected = _listed(record.get("chosen")), _listed(record.get("rejected"))
    if isinstance(chosen, list) or isinstance(rejected, list):
        prompt = _listed(record.get(prompt_column)) if prompt_column else None
        return _from_messages(chosen, rejected, prompt, where)
    if prompt_column is not None:
        return {
            "instruction": _text(record.get(prompt_column)),
            "input": _text(record.get("input")) if prompt_column == "instruction" else "",
            "output": _text(chosen),
            "rejected": _text(rejected),
        }
    return _from_hh_dialogues(_text(chosen), _text(rejected), where)


def _from_hh_dialogues(chosen: str, rejected: str, where: str) -> dict[str, str]:
    """Split two HH-RLHF dialogues at their last ``Assistant:`` turn (the shared prompt)."""
    chosen_turns, rejected_turns = _hh_turns(chosen, where), _hh_turns(rejected, where)
    if chosen_turns[-1]["role"] != "assistant" or rejected_turns[-1]["role"] != "assistant":
        raise ConfigError(f"{where}: an HH-RLHF dialogue must end with an 'Assistant:' turn")
    if chosen_turns[:-1] != rejected_turns[:-1]:
        raise ConfigError(
            f"{where}: chosen and rejected dialogues differ before their last 'Assistant:' turn"
        )
    return _pair(chosen_turns[:-1], chosen_turns[-1]["content"], rejected_turns[-1]["content"])


def _hh_turns(dialogue: str, where: str) -> list[dict[str, str]]:
    parts = _HH_TURN.split("\n\n" + dialogue.lstrip("\n") if dialogue.strip() else "")
    if len(parts) < 3:
        raise ConfigError(
            f"{where}: no prompt column and no 'Human:'/'Assistant:' turns in 'chosen'; "
            f"{FORMATS_HINT}"
        )
    # parts = [text before the first turn, role, content, role, content, ...]
    return [
        {"role": _HH_ROLES[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _from_messages(chosen: Any, rejected: Any, prompt: Any, where: str) -> dict[str, str]:
    """UltraFeedback-binarized lists, or TRL's conversational prompt + one-message answers."""
    chosen_msgs, rejected_msgs = (
        _messages(chosen, "chosen", where),
        _messages(rejected, "rejected", where),
    )
    if isinstance(prompt, list):
        context = _messages(prompt, "prompt", where)
    else:
        context = chosen_msgs[:-1]
        if rejected_msgs[:-1] not in (context, []):
            raise ConfigError(f"{where}: chosen and rejected messages differ before the answer")
        if not context and isinstance(prompt, str) and prompt:
            context = [{"role": "user", "content": prompt}]
    for name, msgs in (("chosen", chosen_msgs), ("rejected", rejected_msgs)):
        if msgs[-1]["role"] != "assistant":
            raise ConfigError(f"{where}: {name!r} must end with an assistant message")
    if not context:
        raise ConfigError(f"{where}: no prompt: 'chosen' holds only the answer")
    return _pair(context, chosen_msgs[-1]["content"], rejected_msgs[-1]["content"])


def _messages(value: Any, column: str, where: str) -> list[dict[str, str]]:
    value = _listed(value)
    ok = (
        isinstance(value, list)
        and value
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    )
    if not ok:
        raise ConfigError(f"{where}: {column!r} is not a list of {{role, content}} messages")
    return [{"role": _text(m["role"]), "content": _text(m["content"])} for m in value]


def _pair(context: list[dict[str, str]], chosen: str, rejected: str) -> dict[str, str]:
    """One pair; a single user turn is stored as a plain instruction (the quickstart's form)."""
    users = [m["content"] for m in context if m["role"] == "user"]
    single = len(context) == 1 and context[0]["role"] == "user"
    return {
        "instruction": users[-1] if users else "",
        "input": "",
        "output": chosen,
        "rejected": rejected,
        "messages": "" if single else json.dumps(context, ensure_ascii=False),
    }


def _listed(value: Any) -> Any:
    """Parquet gives lists as numpy arrays, CSV as JSON text; both become Python lists."""
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN from pandas
        return ""
    return value if isinstance(value, str) else str(value)


def prompt_messages(example: Example) -> list[dict[str, str]] | None:
    """The conversation before the answer, or None for a single instruction (+ input)."""
    raw = example.get("messages", "")
    return json.loads(raw) if raw else None


@dataclass
class TokenizedPair:
    """A preference pair as two label-masked sequences that share the prompt's tokens."""

    chosen: TokenizedExample
    rejected: TokenizedExample
    category: str
    truncated: bool

    @property
    def input_ids(self) -> list[int]:
        """The longer sequence: what length-grouped batching sorts pairs by."""
        longer = max((self.chosen, self.rejected), key=lambda side: len(side.input_ids))
        return longer.input_ids


def _tokenize_answer(
    example: Example, answer: str, tokenizer: Any, template: str, cutoff_len: int
) -> TokenizedExample:
    messages = prompt_messages(example)
    if messages is None:
        return tokenize_example({**example, "output": answer}, tokenizer, template, cutoff_len)
    # A conversation: the prompt is exactly what `fedit serve` builds for these messages.
    prompt = chat_prompt(messages, template, tokenizer)
    full = prompt + answer + (tokenizer.eos_token or "")
    if template == "chat":
        rendered = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": answer}], tokenize=False
        )
        full = rendered if rendered.startswith(prompt) else full
    special = template != "chat"  # the chat template writes its own special tokens
    input_ids = list(tokenizer(full, add_special_tokens=special)["input_ids"])
    prompt_len = len(tokenizer(prompt, add_special_tokens=special)["input_ids"])
    labels = [IGNORE_INDEX] * min(prompt_len, cutoff_len) + input_ids[prompt_len:cutoff_len]
    truncated = len(input_ids) > cutoff_len
    return TokenizedExample(input_ids[:cutoff_len], labels, example["category"], truncated)


def tokenize_pairs(
    examples: list[Example], tokenizer: Any, template: str, cutoff_len: int
) -> tuple[list[TokenizedPair], dict[str, int]]:
    """Tokenize preference pairs; a pair whose chosen or rejected answer was cut away entirely
    is dropped. Returns the pairs and counts of truncated and dropped pairs."""
    kept: list[TokenizedPair] = []
    stats = {"total": len(examples), "truncated": 0, "dropped_no_labels": 0}
    for example in examples:
        chosen = _tokenize_answer(example, example["output"], tokenizer, template, cutoff_len)
        rejected = _tokenize_answer(example, example["rejected"], tokenizer, template, cutoff_len)
        truncated = chosen.truncated or rejected.truncated
        stats["truncated"] += truncated
        if any(all(x == IGNORE_INDEX for x in side.labels) for side in (chosen, rejected)):
            stats["dropped_no_labels"] += 1
            continue
        kept.append(TokenizedPair(chosen, rejected, example["category"], truncated))
    return kept, stats
