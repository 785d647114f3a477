"""The ``preference`` suite: held-out pairs scored by implicit reward, plus greedy answers.

``preference`` alone is the run's held-out pairs (on the embedded suite: the same held-out
instructions as ``heldout``, each with its wrong answer); ``preference:SOURCE`` reads any
preference file or hub dataset (``data/preference.py``'s formats). Scores: reward accuracy,
mean reward margin, chosen and rejected log-probabilities, per category
(``client/evaluate_preference.py``, base model as the reference), and the exact-answer accuracy
of greedy answers against the chosen answer, so DPO's effect on what the model actually says is
visible next to its effect on likelihoods.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fedit.client.evaluate import answer_examples
from fedit.client.evaluate_preference import evaluate_preferences
from fedit.config import Config, ConfigError
from fedit.data.preference import tokenize_pairs
from fedit.evaluation.metrics import exact_answer_accuracy
from fedit.types import Example


def load_preference_pairs(source: str | None, cfg: Config, key: str) -> list[Example]:
    """The run's held-out pairs (no source) or a preference file / hub dataset.

    Raises:
        ConfigError: No held-out examples, or a bad source (naming the suite and file).
    """
    if source is None:
        from fedit.data.prepare import prepare_data

        dpo = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, objective="dpo"))
        pairs = prepare_data(dpo).test
        if not pairs:
            raise ConfigError(
                f"{key}: the run holds out no test pairs "
                f"(data.test_per_category={cfg.data.test_per_category})"
            )
        return pairs
    from fedit.data.sources import load_source

    return load_source(source, key, "test", cfg.data, preference=True)


def score_preferences(
    model: Any, tokenizer: Any, template: str, cfg: Config, pairs: list[Example], autocast: str
) -> dict[str, Any]:
    """Reward accuracy, margin and log-probabilities per category, and answer accuracy."""
    tokenized, _ = tokenize_pairs(pairs, tokenizer, template, cfg.train.cutoff_len)
    result: dict[str, Any] = {}
    if tokenized:
        result.update(evaluate_preferences(model, tokenized, cfg.dpo.beta, cfg.eval.batch_size))
    # Greedy answers to single-instruction prompts (the embedded pairs); multi-turn prompts are
    # scored by likelihood only.
    if cfg.eval.generate and not any(pair.get("messages") for pair in pairs):
        answers = answer_examples(
            model,
            tokenizer,
            pairs,
            template,
            cfg.eval.max_new_tokens,
            cfg.eval.batch_size,
            autocast,
        )
        chosen = [pair["output"] for pair in pairs]
        categories = [pair["category"] for pair in pairs]
        result.update(exact_answer_accuracy(answers, chosen, categories))
        result["samples"] = [
            {"category": c, "chosen": r, "rejected": p["rejected"], "answer": a[:500]}
            for c, r, p, a in zip(categories, chosen, pairs, answers, strict=True)
        ][:50]
    return result
