"""Multiple-choice evaluation (MMLU style): the option the model finds most likely is its answer.

Each question becomes one prompt that lists the lettered options; each option's continuation
``"C. blue"`` is scored by the sum of its tokens' log-probabilities given the prompt, with one
forward pass per (question, option) row. No text is generated, so a small model that never
writes a clean letter is still measured.

Two file layouts are read (JSON or JSONL, one question per record):

- MMLU: ``{"question", "options" | "choices": [...] or {"A": ...}, "answer": "C" | 2 | text,
  "subject"?}``
- Alpaca: ``{"instruction": "...\\nOptions: A. red, B. green, C. blue", "input"?,
  "output": "The answer is: C. blue"}`` (options also one per line, ``A. red``)

Example:
    questions = load_mc_questions(Path("mmlu_dev.jsonl"))
    result = score_multiple_choice(model, tokenizer, questions, "alpaca", batch_size=16)
    result["accuracy"], result["accuracy_by_subject"]
"""

from __future__ import annotations

import logging
import re
import string
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from fedit.client.batching import collate
from fedit.client.evaluate import by_length, eval_mode, keep_tail, report_batch, warn_cut
from fedit.client.train import autocast_context, model_device, model_pad_token_id, token_loss_sum
from fedit.config import ConfigError
from fedit.data.sources import read_records
from fedit.data.templates import IGNORE_INDEX, TokenizedExample, build_prompt
from fedit.model.loading import context_window
from fedit.types import Example

logger = logging.getLogger(__name__)

LETTERS = string.ascii_uppercase
INSTRUCTION_SUFFIX = "Answer with the letter of the correct option."

_OPTIONS_HEADER = re.compile(r"(?:options|choices)\s*:?\s*$", re.IGNORECASE)
# An answer letter in an Alpaca output: "The answer is: C. blue", "Answer: (C)", "C", "(C)", "C."
_ANSWER_PHRASE = re.compile(r"(?i:answer)(?:\s+is)?\s*:?\s*\(?([A-Z])\)?(?![A-Za-z])")
_BARE_LETTER = re.compile(r"\(?([A-Z])\)?(?:[.):](?:\s.*)?)?", re.DOTALL)


@dataclass(frozen=True)
class MCQuestion:
    """One multiple-choice question; ``answer`` indexes ``options``."""

    question: str
    options: list[str]
    answer: int
    subject: str


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _letter_range(num_options: int) -> str:
    return f"A-{LETTERS[num_options - 1]}"


# ---------------------------------------------------------------------------------------------
# Reading questions


def _mmlu_options(record: dict[str, Any], where: str) -> list[str]:
    key = "options" if "options" in record else "choices"
    if key not in record:
        raise ConfigError(f"{where}: missing 'options' (or 'choices')")
    raw = record[key]
    if isinstance(raw, dict):
        keys = [str(k).strip().upper() for k in raw]
        if sorted(keys) != list(LETTERS[: len(keys)]):
            raise ConfigError(f"{where}: '{key}' keys must be A, B, C, ...; got {list(raw)}")
        options = [_text(value) for _, value in sorted(zip(keys, raw.values(), strict=True))]
    elif isinstance(raw, list):
        options = [_text(value) for value in raw]
    else:
        raise ConfigError(f"{where}: '{key}' must be a list or an A/B/C... object")
    if not 2 <= len(options) <= len(LETTERS) or not all(options):
        raise ConfigError(f"{where}: '{key}' needs 2 to 26 non-empty options; got {raw!r}")
    return options


def _answer_index(answer: Any, options: list[str], where: str) -> int:
    """A letter ("C"), an index (2) or the option's text -> index into ``options``."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        if 0 <= answer < len(options):
            return answer
        raise ConfigError(f"{where}: answer {answer} is not an option index 0-{len(options) - 1}")
    text = _text(answer)
    letter = text.strip("().").strip()
    if len(letter) == 1 and letter in LETTERS:
        if LETTERS.index(letter) < len(options):
            return LETTERS.index(letter)
        if text not in options:
            raise ConfigError(
                f"{where}: answer {letter!r} is not one of {_letter_range(len(options))}"
            )
    if text in options:
        return options.index(text)
    if text.isdigit() and int(text) < len(options):
        return int(text)
    raise ConfigError(f"{where}: answer {text!r} is not a letter, an index or an option's text")


def _mmlu_question(record: dict[str, Any], where: str, default_subject: str) -> MCQuestion:
    if not _text(record["question"]):
        raise ConfigError(f"{where}: 'question' is empty")
    options = _mmlu_options(record, where)
    if "answer" not in record:
        raise ConfigError(f"{where}: missing 'answer'")
    answer = _answer_index(record["answer"], options, where)
    subject = _text(record.get("subject")) or _text(record.get("category")) or default_subject
    return MCQuestion(_text(record["question"]), options, answer, subject)


def _label(letter: str) -> re.Pattern[str]:
    """An option label ``A.`` / ``A)`` / ``(A)`` at a line start or after a space or ``:,;``."""
    return re.compile(rf"(?:^|(?<=[\s:,;]))(?:\({letter}\)|{letter}[.)])[ \t]+", re.MULTILINE)


def _first_label(text: str) -> re.Match[str] | None:
    """The label ``A`` that starts the options: the last one with a ``B`` label after it."""
    following = _label("B")
    starts = [m for m in _label("A").finditer(text) if following.search(text, m.end())]
    return starts[-1] if starts else None


def _find_options(text: str) -> tuple[list[str], str] | None:
    """Lettered options listed in ``text`` (inline or one per line) and the text without them.

    An option runs to the next letter's label; the last one (or one followed by a line that
    does not start with the next label) ends at the end of its line.
    """
    start = _first_label(text)
    if start is None:
        return None
    options: list[str] = []
    position = start.end()
    while True:
        letter = LETTERS[len(options) + 1] if len(options) + 1 < len(LETTERS) else None
        found = _label(letter).search(text, position) if letter else None
        end = found.start() if found else len(text)
        line, _, after = text[position:end].partition("\n")
        options.append(line.strip().rstrip(",;").strip())
        if found is None or after.strip():
            rest = text[position + len(line) :]
            break
        position = found.end()
    if not all(options):
        return None
    before = _OPTIONS_HEADER.sub("", text[: start.start()].rstrip()).strip()
    return options, "\n".join(part for part in (before, rest.strip()) if part)


def _output_letter(output: str, options: list[str], where: str) -> int:
    """The answer written in an Alpaca output (a letter, or an option's exact text) -> index."""
    text = output.strip()
    match = _ANSWER_PHRASE.search(text) or _BARE_LETTER.fullmatch(text)
    if match is None:
        folded = [option.casefold() for option in options]
        if text.rstrip(".").casefold() in folded:
            return folded.index(text.rstrip(".").casefold())
        raise ConfigError(f"{where}: 'output' names no option letter: {text[:60]!r}")
    index = LETTERS.index(match.group(1))
    if index >= len(options):
        letter = match.group(1)
        raise ConfigError(f"{where}: answer {letter!r} is not one of {_letter_range(len(options))}")
    return index


def _alpaca_question(record: dict[str, Any], where: str, default_subject: str) -> MCQuestion:
    instruction, input_text = _text(record["instruction"]), _text(record.get("input"))
    if "output" not in record:
        raise ConfigError(f"{where}: missing 'output'")
    found = _find_options(input_text) if input_text else None
    if found is not None:
        options, rest = found
        question = "\n\n".join(part for part in (instruction, rest) if part)
    else:
        found = _find_options(instruction)
        if found is None:
            raise ConfigError(
                f"{where}: 'instruction' lists no options (expected 'A. ...', 'B. ...')"
            )
        options, question = found
        question = "\n\n".join(part for part in (question, input_text) if part)
    answer = _output_letter(_text(record["output"]), options, where)
    subject = _text(record.get("subject")) or _text(record.get("category")) or default_subject
    return MCQuestion(question, options, answer, subject)


def load_mc_questions(path: Path) -> list[MCQuestion]:
    """Read multiple-choice questions, MMLU or Alpaca layout, from a JSON or JSONL file.

    Args:
        path: The file; each record's ``subject`` (else ``category``, else the file's stem)
            groups the accuracy.

    Returns:
        One question per record, in file order.

    Raises:
        ConfigError: An unreadable or empty file, or a record that fits neither layout, naming
            the file, the record (counted from 1) and the missing or bad key.
    """
    records = read_records(path, key=str(path))
    if not records:
        raise ConfigError(f"{path}: no questions")
    questions = []
    for number, record in enumerate(records, start=1):
        where = f"{path}: record {number}"
        if "question" in record:
            questions.append(_mmlu_question(record, where, path.stem))
        elif "instruction" in record:
            questions.append(_alpaca_question(record, where, path.stem))
        else:
            raise ConfigError(
                f"{where}: missing 'question' (MMLU layout) or 'instruction' (Alpaca layout)"
            )
    logger.info("%s: %d multiple-choice questions", path, len(questions))
    return questions


# ---------------------------------------------------------------------------------------------
# Scoring


def mc_example(question: MCQuestion) -> Example:
    """The instruction shown to the model: the question, the lettered options, the request."""
    lines = [question.question]
    lines += [f"{LETTERS[i]}. {option}" for i, option in enumerate(question.options)]
    lines.append(INSTRUCTION_SUFFIX)
    return {
        "instruction": "\n".join(lines),
        "input": "",
        "output": "",
        "category": question.subject,
    }


def option_continuation(question: MCQuestion, index: int) -> str:
    """The text scored for option ``index``: ``"C. blue"``."""
    return f"{LETTERS[index]}. {question.options[index]}"


def _option_rows(
    questions: list[MCQuestion], template: str, tokenizer: Any, window: int | None = None
) -> list[TokenizedExample]:
    """One row per (question, option): prompt + continuation, labels only on the continuation.

    The split is training's: the prompt's own token count marks where the response starts in
    the tokenized whole text. No EOS is appended, so only the option's own tokens are scored.
    A row longer than ``window`` loses the start of its prompt (a leading BOS stays).
    """
    add_special_tokens = template != "chat"
    rows = []
    cut = 0
    for question in questions:
        prompt = build_prompt(mc_example(question), template, tokenizer)
        prompt_len = len(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])
        for index in range(len(question.options)):
            text = prompt + option_continuation(question, index)
            input_ids = list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
            if len(input_ids) <= prompt_len:
                raise ValueError(f"option {index} of {question.question[:40]!r} has no tokens")
            labels = [IGNORE_INDEX] * prompt_len + input_ids[prompt_len:]
            if window is not None and len(input_ids) > window:
                keep_first = input_ids[:1] == [tokenizer.bos_token_id]
                input_ids = keep_tail(input_ids, window, keep_first)
                labels = keep_tail(labels, window, keep_first)
                cut += 1
            rows.append(TokenizedExample(input_ids, labels, question.subject, False))
    if window is not None:
        warn_cut(cut, len(rows), "question-option rows", window)
    return rows


def option_log_likelihoods(
    model: nn.Module, rows: list[TokenizedExample], batch_size: int, autocast: str = "auto"
) -> list[float]:
    """Sum of log-probabilities of each row's label tokens, in row order (right-padded batches)."""
    device = model_device(model)
    pad_token_id = model_pad_token_id(model)
    scores = [0.0] * len(rows)
    with eval_mode(model):
        for indices in by_length([len(row.input_ids) for row in rows], batch_size):
            batch = collate([rows[i] for i in indices], pad_token_id)
            batch = {key: value.to(device) for key, value in batch.items()}
            with autocast_context(device, autocast):
                _, per_row = token_loss_sum(model, batch)  # (B,) summed negative log-likelihood
            for index, loss in zip(indices, per_row.tolist(), strict=True):
                scores[index] = -loss
            report_batch(len(indices))
    return scores


def score_multiple_choice(
    model: nn.Module,
    tokenizer: Any,
    questions: list[MCQuestion],
    template: str,
    batch_size: int,
    autocast: str = "auto",
) -> dict[str, Any]:
    """Pick each question's most likely option and report the accuracy.

    Args:
        model: Any causal LM (base or peft); its train/eval mode is restored afterwards.
        tokenizer: Its tokenizer.
        questions: From ``load_mc_questions``.
        template: ``data.template`` (alpaca or chat), used to build the prompts.
        batch_size: (question, option) rows per forward pass.
        autocast: As ``train.autocast``.

    Returns:
        ``accuracy``, ``num_questions``, ``accuracy_by_subject`` and ``predictions``: per
        question its ``subject``, the ``answer`` and ``predicted`` letters and the options'
        ``log_likelihoods`` (summed over each continuation's tokens).
    """
    if not questions:
        raise ValueError("score_multiple_choice: got no questions")
    rows = _option_rows(questions, template, tokenizer, context_window(model, tokenizer))
    scores = option_log_likelihoods(model, rows, batch_size, autocast)
    correct: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    predictions = []
    start = 0
    for question in questions:
        likelihoods = scores[start : start + len(question.options)]
        start += len(question.options)
        predicted = max(range(len(likelihoods)), key=likelihoods.__getitem__)
        counts[question.subject] += 1
        correct[question.subject] += predicted == question.answer
        predictions.append(
            {
                "subject": question.subject,
                "answer": LETTERS[question.answer],
                "predicted": LETTERS[predicted],
                "log_likelihoods": likelihoods,
            }
        )
    return {
        "accuracy": sum(correct.values()) / len(questions),
        "num_questions": len(questions),
        "accuracy_by_subject": {s: correct[s] / counts[s] for s in sorted(counts)},
        "predictions": predictions,
    }
