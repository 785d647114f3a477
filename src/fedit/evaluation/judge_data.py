"""The LLM judge's inputs: FastChat questions, judge prompt templates, and parsing verdicts.

``question.jsonl`` (Vicuna-bench, MT-Bench) and ``judge_prompts.jsonl`` are FastChat's formats;
``select_template`` picks the template FastChat would, and ``parse_rating``/``parse_verdict``
read the judge's ``[[8]]`` / ``[[A]]`` markers. Grading lives in ``evaluation.judge``.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from fedit.config import ConfigError
from fedit.evaluation.judge_client import Messages

QuestionId = int | str

NEED_REF_CATEGORIES = frozenset({"math", "reasoning", "coding"})  # FastChat's NEED_REF_CATS
# (mode, uses reference, multi-turn) -> FastChat template name
TEMPLATES = {
    ("single", False, False): "single-v1",
    ("single", False, True): "single-v1-multi-turn",
    ("single", True, False): "single-math-v1",
    ("single", True, True): "single-math-v1-multi-turn",
    ("pairwise", False, False): "pair-v2",
    ("pairwise", False, True): "pair-v2-multi-turn",
    ("pairwise", True, False): "pair-math-v1",
    ("pairwise", True, True): "pair-math-v1-multi-turn",
}
TEMPLATE_FIELDS = frozenset(
    {"question", "question_1", "question_2", "ref_answer_1", "ref_answer_2"}
    | {f"answer{side}{turn}" for side in ("", "_a", "_b") for turn in ("", "_1", "_2")}
)
MAX_TURNS = 2  # the templates grade at most two turns

_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")
_VERDICT = re.compile(r"\[\[([ABC])\]\]")


@dataclass(frozen=True)
class JudgeQuestion:
    """One benchmark question: its turns and, for some, reference answers per turn."""

    question_id: QuestionId
    category: str
    turns: list[str]
    reference: list[str] | None = None


@dataclass(frozen=True)
class JudgePrompt:
    """One FastChat judge template (``judge_prompts.jsonl`` record)."""

    name: str
    type: str
    system_prompt: str
    prompt_template: str
    category: str
    output_format: str


def _read_records(path: Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON-lines file."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the {what} file ({err})") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{number}: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{path}:{number}: expected a JSON object")
        records.append((number, record))
    return records


def _is_texts(value: Any) -> TypeGuard[list[str]]:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _parse_question(record: dict[str, Any], where: str) -> JudgeQuestion:
    qid, category, turns = record.get("question_id"), record.get("category"), record.get("turns")
    if not isinstance(qid, (int, str)) or isinstance(qid, bool):
        raise ConfigError(f"{where}: question_id must be an integer or a string, got {qid!r}")
    if not isinstance(category, str):
        raise ConfigError(f"{where}: question {qid!r} needs a string 'category'")
    if not _is_texts(turns) or len(turns) > MAX_TURNS:
        raise ConfigError(f"{where}: question {qid!r}: 'turns' must be 1 or 2 strings")
    reference = record.get("reference")
    if reference is not None and not _is_texts(reference):
        raise ConfigError(f"{where}: question {qid!r}: 'reference' must be a list of strings")
    return JudgeQuestion(qid, category, list(turns), list(reference) if reference else None)


def _load_references(path: Path) -> dict[QuestionId, list[str]]:
    """question_id -> ``choices[0].turns`` of a FastChat answer file."""
    references = {}
    for number, record in _read_records(path, "reference answer"):
        try:
            qid, turns = record["question_id"], record["choices"][0]["turns"]
        except (KeyError, IndexError, TypeError):
            raise ConfigError(
                f"{path}:{number}: expected question_id and choices[0].turns"
            ) from None
        if not _is_texts(turns):
            raise ConfigError(f"{path}:{number}: choices[0].turns must be a list of strings")
        references[qid] = list(turns)
    return references


def load_judge_questions(path: Path, reference_answers: Path | None = None) -> list[JudgeQuestion]:
    """Read a FastChat question file (Vicuna bench, MT-Bench).

    Args:
        path: JSON lines of ``{"question_id", "category", "turns", "reference"?}``.
        reference_answers: Optional FastChat answer file (``reference_answer/gpt-4.jsonl``);
            where it has a question, its answer is that question's reference.

    Raises:
        ConfigError: Naming the file and line of a bad record or a duplicate id.
    """
    references = _load_references(reference_answers) if reference_answers else {}
    questions: list[JudgeQuestion] = []
    seen: set[QuestionId] = set()
    for number, record in _read_records(path, "question"):
        question = _parse_question(record, f"{path}:{number}")
        if question.question_id in seen:
            raise ConfigError(f"{path}:{number}: duplicate question_id {question.question_id!r}")
        seen.add(question.question_id)
        if question.question_id in references:
            question = JudgeQuestion(
                question.question_id,
                question.category,
                question.turns,
                references[question.question_id],
            )
        questions.append(question)
    if not questions:
        raise ConfigError(f"{path}: no questions")
    return questions


def _parse_prompt(record: dict[str, Any], where: str) -> JudgePrompt:
    keys = ("name", "type", "system_prompt", "prompt_template", "category", "output_format")
    missing = [key for key in keys if not isinstance(record.get(key), str)]
    if missing:
        raise ConfigError(f"{where}: judge prompt needs string fields {', '.join(missing)}")
    prompt = JudgePrompt(**{key: record[key] for key in keys})
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(prompt.prompt_template)}
    except ValueError as err:
        raise ConfigError(f"{where}: template {prompt.name!r} is malformed ({err})") from None
    unknown = sorted(str(name) for name in fields - TEMPLATE_FIELDS - {None})
    if unknown:
        raise ConfigError(f"{where}: template {prompt.name!r} uses unknown fields {unknown}")
    return prompt


def load_judge_prompts(
    path: Path, required: Iterable[str] = TEMPLATES.values()
) -> dict[str, JudgePrompt]:
    """Read FastChat's ``judge_prompts.jsonl``: template name -> :class:`JudgePrompt`.

    Raises:
        ConfigError: A bad record (file and line), or a ``required`` template is missing.
    """
    prompts = {}
    for number, record in _read_records(path, "judge prompt"):
        prompt = _parse_prompt(record, f"{path}:{number}")
        prompts[prompt.name] = prompt
    missing = [name for name in required if name not in prompts]
    if missing:
        raise ConfigError(
            f"{path}: missing judge templates {', '.join(missing)} "
            "(expected FastChat's llm_judge/data/judge_prompts.jsonl)"
        )
    return prompts


def select_template(question: JudgeQuestion, mode: str, turn: int) -> str:
    """FastChat's template for grading ``turn`` (1 or 2) of ``question`` in ``mode``."""
    uses_reference = (
        question.category in NEED_REF_CATEGORIES
        and question.reference is not None
        and len(question.reference) >= turn
    )
    return TEMPLATES[(mode, uses_reference, turn > 1)]


def _messages(
    prompt: JudgePrompt, question: JudgeQuestion, answers: dict[str, list[str]]
) -> Messages:
    """The judge chat for one template; ``answers`` maps a field suffix ("", "_a", "_b")
    to that answer's turns."""
    fields = {"question": question.turns[0]}
    fields.update({f"question_{i}": text for i, text in enumerate(question.turns, 1)})
    fields.update({f"ref_answer_{i}": text for i, text in enumerate(question.reference or [], 1)})
    for suffix, turns in answers.items():
        fields[f"answer{suffix}"] = turns[0]
        fields.update({f"answer{suffix}_{i}": text for i, text in enumerate(turns, 1)})
    return [
        {"role": "system", "content": prompt.system_prompt},
        {"role": "user", "content": prompt.prompt_template.format(**fields)},
    ]


def parse_rating(reply: str) -> float | None:
    """The 1-10 rating in a single-grading reply (``[[8]]``, ``[[8.5]]``, fallback ``[8]``)."""
    found = _RATING.findall(reply) or _RATING_FALLBACK.findall(reply)
    if not found:
        return None
    rating = float(found[-1])
    return rating if 1.0 <= rating <= 10.0 else None


def parse_verdict(reply: str) -> str | None:
    """``"A"``, ``"B"`` or ``"C"`` (tie) from a pairwise reply's last ``[[X]]``."""
    found = _VERDICT.findall(reply)
    return found[-1] if found else None
