"""A held-out prompt longer than the model's context window: every suite cuts it to fit (keeping
its end, where the response starts) and warns with the count, instead of feeding the model a
sequence it was never built for."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from fedit.config import ModelConfig, load_config
from fedit.evaluation.judge_data import JudgeQuestion
from fedit.evaluation.multiple_choice import MCQuestion
from fedit.evaluation.suites import (
    EvalContext,
    InstructionSuite,
    JudgeSuite,
    MultipleChoiceSuite,
    NumericSuite,
    SuiteSpec,
)
from fedit.model import load_model

WINDOW = 512  # the tiny model's max_position_embeddings
LONG = "red green blue " * 400  # about 1,200 tokens


class LongestSequence:
    """Forward pre-hook: the longest sequence (cached positions included) the model was given."""

    def __init__(self) -> None:
        self.longest = 0

    def __call__(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        mask, ids = kwargs.get("attention_mask"), kwargs.get("input_ids")
        lengths = [t.shape[-1] for t in (mask, ids) if t is not None]
        self.longest = max(self.longest, *lengths)


@pytest.fixture(scope="module")
def watched(tiny_model_dir: Path):
    model, tokenizer = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    assert model.config.max_position_embeddings == WINDOW
    watch = LongestSequence()
    handle = model.register_forward_pre_hook(watch, with_kwargs=True)
    cfg = load_config(
        None,
        [
            f"model.name={tiny_model_dir}",
            "eval.max_new_tokens=6",
            "eval.long_max_new_tokens=6",
            "eval.batch_size=2",
        ],
    )
    yield model, tokenizer, cfg, watch
    handle.remove()


def _example(instruction: str, output: str) -> dict[str, str]:
    return {"instruction": instruction, "input": "", "output": output, "category": "c"}


SUITES = {
    "heldout / instructions": InstructionSuite(
        SuiteSpec("instructions", "instructions", "x"),
        [_example(LONG + "What is 1 + 1?", "2"), _example("What is 2 + 2?", "4")],
    ),
    "mc": MultipleChoiceSuite(
        SuiteSpec("mc", "mc", "x"),
        [
            MCQuestion(LONG + "Which is a color?", ["blue", "fox"], 0, "s"),
            MCQuestion("Which is a color?", ["blue", "fox"], 0, "s"),
        ],
    ),
    "gsm8k": NumericSuite(
        SuiteSpec("gsm8k", "gsm8k", "x"),
        [_example(LONG + "What is 1 + 1?", "#### 2"), _example("What is 2 + 2?", "#### 4")],
    ),
    "judge": JudgeSuite(
        SuiteSpec("judge", "judge", "x"),
        [JudgeQuestion(1, "c", [LONG + "Say hi."]), JudgeQuestion(2, "c", ["Say hi."])],
    ),
}


@pytest.mark.parametrize("name", list(SUITES))
@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_every_suite_fits_long_prompts_into_the_context_and_counts_them(
    watched, name, template, caplog
):
    model, tokenizer, cfg, watch = watched
    watch.longest = 0
    with caplog.at_level(logging.WARNING):
        result = SUITES[name].evaluate(EvalContext(model, tokenizer, template, cfg))
    assert result["suite"]
    assert 0 < watch.longest <= WINDOW, f"the model was given {watch.longest} positions"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    rows = "2 of 4" if name == "mc" else "1 of 2"  # mc scores one row per option
    assert any(rows in w and "context window" in w for w in warnings), warnings
