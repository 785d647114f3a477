"""Evaluation suites: what ``fedit eval --suite`` and ``fedit compare`` score a model on.

A suite spec is ``KIND`` or ``KIND:SOURCE``, optionally named: ``NAME=KIND:SOURCE``.

=================  ==========================================================================
``heldout``        the run's held-out test split (the same one training held out)
``instructions:S`` any file, folder (its ``test.*``) or hub dataset in the core data formats
``preference``     the run's held-out preference pairs (``preference:S``: a preference source);
                   reward accuracy, margin, log-probs, greedy exact-answer accuracy
``mc:FILE``        multiple choice (MMLU style or Alpaca ``Options: A. ...``), by log-likelihood
``gsm8k:FILE``     free-form numeric answers; the reference ends with ``#### 42``
``judge:FILE``     FastChat ``question.jsonl`` (Vicuna-bench, MT-Bench) graded by an LLM judge
``lm_eval:T[,T]``  EleutherAI's lm-evaluation-harness: task names or local task YAMLs
                   (``evaluation.harness``; needs ``fedit[lmeval]``)
=================  ==========================================================================

Example:
    suite = load_suite(parse_suite("mc:data/mmlu.jsonl"), run_cfg)
    result = suite.evaluate(EvalContext(model, tokenizer, "alpaca", run_cfg))
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fedit.client.evaluate import answer_examples, evaluate_loss
from fedit.config import Config, ConfigError
from fedit.data.synthetic import score_answer
from fedit.data.templates import tokenize_examples
from fedit.evaluation.answers import generate_turn_answers
from fedit.evaluation.metrics import exact_answer_accuracy, generation_scores, rouge_l, token_f1
from fedit.types import Example

log = logging.getLogger(__name__)

SUITE_KINDS = ("heldout", "instructions", "preference", "mc", "gsm8k", "judge", "lm_eval")
_OPTIONAL_SOURCE = ("preference",)  # alone: the run's held-out pairs
_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")
# File stems too generic to name a suite by; the folder name is used instead.
_GENERIC_STEMS = {"question", "questions", "test", "train", "data", "validation", "dev"}


@dataclass(frozen=True)
class SuiteSpec:
    """A parsed ``--suite`` value."""

    name: str
    kind: str
    source: str | None = None


def parse_suite(spec: str, key: str = "--suite") -> SuiteSpec:
    """Parse ``KIND``, ``KIND:SOURCE`` or ``NAME=KIND:SOURCE``; errors start with ``key``.

    Raises:
        ConfigError: Unknown kind, a missing or superfluous source, or a bad name.
    """
    name, _, rest = spec.partition("=") if "=" in spec.split(":", 1)[0] else ("", "", spec)
    kind, _, source = rest.partition(":")
    if kind not in SUITE_KINDS:
        raise ConfigError(f"{key} {spec!r}: unknown kind {kind!r}; use {', '.join(SUITE_KINDS)}")
    if kind == "heldout" and source:
        raise ConfigError(f"{key} {spec!r}: heldout takes no source (it is the run's test split)")
    if kind != "heldout" and kind not in _OPTIONAL_SOURCE and not source:
        raise ConfigError(f"{key} {spec!r}: {kind} needs a source, e.g. {kind}:path/to/file")
    if kind == "lm_eval" and not all(item.strip() for item in source.split(",")):
        raise ConfigError(f"{key} {spec!r}: an empty task name; use lm_eval:TASK[,TASK...]")
    name = name or _default_name(kind, source)
    if not _NAME.match(name):
        raise ConfigError(f"{key} {spec!r}: name {name!r} must be letters, digits, '_', '-', '.'")
    return SuiteSpec(name, kind, source or None)


def _default_name(kind: str, source: str) -> str:
    if not source:
        return kind
    if kind == "lm_eval":  # lm_eval_<task>: a task YAML's file name, or lm-eval's task name
        items = [item.strip() for item in source.split(",")]
        tasks = [Path(t).stem if t.lower().endswith((".yaml", ".yml")) else t for t in items]
        return "lm_eval_" + "_".join(re.sub(r"[^\w.-]", "_", task) for task in tasks)
    path = Path(source)
    stem = path.stem if path.suffix else path.name
    if stem.lower() in _GENERIC_STEMS and path.parent.name:
        stem = path.parent.name
    return re.sub(r"[^\w.-]", "_", stem) or kind


@dataclass
class EvalContext:
    """The model being scored and how to prompt it."""

    model: Any
    tokenizer: Any
    template: str
    cfg: Config
    autocast: str = "auto"


class Suite(Protocol):
    spec: SuiteSpec

    def size(self) -> int:
        """Rows the suite will score or generate (for progress bars)."""
        ...

    def evaluate(self, ctx: EvalContext) -> dict[str, Any]: ...


@dataclass
class InstructionSuite:
    """Held-out instructions: loss and perplexity, then EM / token F1 / ROUGE-L per category."""

    spec: SuiteSpec
    examples: list[Example]

    def size(self) -> int:
        return 2 * len(self.examples)  # a loss pass, then a generation pass

    def evaluate(self, ctx: EvalContext) -> dict[str, Any]:
        cfg = ctx.cfg
        tokenized, _ = tokenize_examples(
            self.examples, ctx.tokenizer, ctx.template, cfg.train.cutoff_len, False
        )
        result: dict[str, Any] = {"suite": self.spec.name, "kind": self.spec.kind}
        if tokenized:
            result.update(evaluate_loss(ctx.model, tokenized, cfg.eval.batch_size, ctx.autocast))
        answers = answer_examples(
            ctx.model,
            ctx.tokenizer,
            self.examples,
            ctx.template,
            cfg.eval.max_new_tokens,
            cfg.eval.batch_size,
            ctx.autocast,
        )
        references = [e["output"] for e in self.examples]
        categories = [e.get("category", "") for e in self.examples]
        result.update(generation_scores(answers, references, categories))
        result.update(exact_answer_accuracy(answers, references, categories))
        # What a paired comparison of two models needs: every example's score, in test order.
        result["per_example"] = per_example_scores(answers, references)
        result["samples"] = [
            {"category": c, "reference": r, "answer": a[:500]}
            for c, r, a in zip(categories, references, answers, strict=True)
        ]
        return result


def per_example_scores(answers: list[str], references: list[str]) -> dict[str, list[float]]:
    """Each example's exact-answer accuracy (0/1), token F1 and ROUGE-L, in the given order."""
    pairs = list(zip(answers, references, strict=True))
    return {
        "accuracy": [float(score_answer(a, r)) for a, r in pairs],
        "token_f1": [token_f1(a, r) for a, r in pairs],
        "rouge_l": [rouge_l(a, r) for a, r in pairs],
    }


@dataclass
class PreferenceSuite:
    """Preference pairs: implicit-reward accuracy and margin, and greedy answers (DPO's suite)."""

    spec: SuiteSpec
    pairs: list[Example]

    def size(self) -> int:
        return 3 * len(self.pairs)  # reference and policy passes, then a generation pass

    def evaluate(self, ctx: EvalContext) -> dict[str, Any]:
        from fedit.evaluation.preference import score_preferences

        result = score_preferences(
            ctx.model, ctx.tokenizer, ctx.template, ctx.cfg, self.pairs, ctx.autocast
        )
        return {"suite": self.spec.name, "kind": self.spec.kind, **result}


@dataclass
class MultipleChoiceSuite:
    """MMLU-style questions: the option with the highest log-likelihood is the answer."""

    spec: SuiteSpec
    questions: list[Any]

    def size(self) -> int:
        return sum(len(question.options) for question in self.questions)

    def evaluate(self, ctx: EvalContext) -> dict[str, Any]:
        from fedit.evaluation.multiple_choice import score_multiple_choice

        result = score_multiple_choice(
            ctx.model,
            ctx.tokenizer,
            self.questions,
            ctx.template,
            ctx.cfg.eval.batch_size,
            autocast=ctx.autocast,
        )
        return {"suite": self.spec.name, "kind": self.spec.kind, **result}


@dataclass
class NumericSuite:
    """GSM8K-style word problems: the final number of the answer must match the reference's."""

    spec: SuiteSpec
    examples: list[Example]

    def size(self) -> int:
        return len(self.examples)

    def evaluate(self, ctx: EvalContext) -> dict[str, Any]:
        from fedit.evaluation.numeric import evaluate_numeric

        result = evaluate_numeric(
            ctx.model,
            ctx.tokenizer,
            self.examples,
            ctx.template,
            ctx.cfg.eval.long_max_new_tokens,
            ctx.cfg.eval.batch_size,
            autocast=ctx.autocast,
        )
        return {"suite": self.spec.name, "kind": self.spec.kind, **result}


@dataclass
class JudgeSuite:
    """Open questions answered by the model, then graded by the LLM judge (``evaluation.judge``).

    ``evaluate`` only writes the answers (turn by turn, as a conversation); grading needs the
    judge endpoint and, for pairwise comparison, a second model's answers.
    """

    spec: SuiteSpec
    questions: list[Any]

    def size(self) -> int:
        return sum(len(question.turns) for question in self.questions)

    def evaluate(self, ctx: EvalContext) -> dict[str, Any]:
        answers = generate_turn_answers(
            ctx.model,
            ctx.tokenizer,
            ctx.template,
            self.questions,
            ctx.cfg.eval.long_max_new_tokens,
            ctx.cfg.eval.batch_size,
        )
        return {
            "suite": self.spec.name,
            "kind": self.spec.kind,
            "num_questions": len(self.questions),
            "answers": {str(qid): turns for qid, turns in answers.items()},
        }


def load_suite(spec: SuiteSpec, cfg: Config, key: str = "--suite") -> Suite:
    """Read a suite's data now, so that a bad file fails before any model is loaded.

    Args:
        spec: The parsed suite.
        cfg: The run's config (its data section defines ``heldout`` and the column mapping).

    Raises:
        ConfigError: A missing or malformed file, naming the suite and the file.
    """
    if spec.kind == "heldout":
        from fedit.data.prepare import prepare_data

        test = prepare_data(cfg).test
        if not test:
            raise ConfigError(
                f"{key} {spec.name}: the run holds out no test examples "
                f"(data.test_per_category={cfg.data.test_per_category})"
            )
        return InstructionSuite(spec, test)
    if spec.kind == "preference":
        from fedit.evaluation.preference import load_preference_pairs

        return PreferenceSuite(spec, load_preference_pairs(spec.source, cfg, f"{key} {spec.name}"))
    source = str(spec.source)
    key = f"{key} {spec.name}"
    if spec.kind == "lm_eval":
        from fedit.evaluation.harness import load_harness_suite

        return load_harness_suite(spec, key)
    if spec.kind == "instructions":
        from fedit.data.sources import load_source

        return InstructionSuite(spec, load_source(source, key, "test", cfg.data))
    path = _existing_file(source, key)
    if spec.kind == "mc":
        from fedit.evaluation.multiple_choice import load_mc_questions

        return MultipleChoiceSuite(spec, load_mc_questions(path))
    if spec.kind == "gsm8k":
        from fedit.evaluation.numeric import load_numeric_examples

        return NumericSuite(spec, load_numeric_examples(path))
    from fedit.evaluation.judge import load_judge_questions

    return JudgeSuite(spec, load_judge_questions(path, _reference_answers(path)))


def _existing_file(source: str, key: str) -> Path:
    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}: file not found: {source}")
    return path


def _reference_answers(questions: Path) -> Path | None:
    """GPT-4 reference answers next to a FastChat question file, where they exist."""
    for candidate in (
        questions.parent / "reference_answer_gpt-4.jsonl",
        questions.parent / "reference_answer" / "gpt-4.jsonl",
    ):
        if candidate.is_file():
            log.info("judge references: %s", candidate)
            return candidate
    return None


def load_suites(specs: list[str], cfg: Config, key: str = "--suite") -> list[Suite]:
    """Parse and load every suite; duplicate names are an error. Errors start with ``key``."""
    parsed = [parse_suite(spec, key) for spec in specs]
    names = [spec.name for spec in parsed]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(
            f"{key}: two suites are named {duplicates[0]!r}; name them NAME=KIND:SOURCE"
        )
    return [load_suite(spec, cfg, key) for spec in parsed]
