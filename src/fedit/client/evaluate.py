"""Evaluate a model on held-out examples: token loss / perplexity and generated-answer accuracy.

Example:
    metrics = evaluate_loss(model, test_tokens, batch_size=8)
    accuracy = evaluate_accuracy(model, tokenizer, test_examples, "alpaca", 32, 8, score_answer)
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig

from fedit.client.batching import collate
from fedit.client.train import autocast_context, model_device, model_pad_token_id, token_loss_sum
from fedit.data.templates import IGNORE_INDEX, TokenizedExample, build_prompt
from fedit.model.loading import context_window
from fedit.types import Example

logger = logging.getLogger(__name__)

# Receives the number of rows each evaluated batch held; set by ``batch_progress``.
_BATCH_DONE: ContextVar[Callable[[int], None] | None] = ContextVar("batch_done", default=None)


@contextmanager
def batch_progress(callback: Callable[[int], None]) -> Iterator[None]:
    """Within the block, every batch that is scored or generated reports its row count to
    ``callback`` (the CLI turns it into a progress bar; library code never prints)."""
    token = _BATCH_DONE.set(callback)
    try:
        yield
    finally:
        _BATCH_DONE.reset(token)


def report_batch(rows: int) -> None:
    """Tell the ``batch_progress`` callback, if any, that ``rows`` more rows are done."""
    callback = _BATCH_DONE.get()
    if callback is not None:
        callback(rows)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for the block; the previous train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def by_length(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Index batches of similar length (longest first) to keep padding small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def evaluate_loss(
    model: nn.Module,
    examples: list[TokenizedExample],
    batch_size: int,
    autocast: str = "auto",
) -> dict[str, Any]:
    """Mean next-token loss on the label tokens, overall and per category.

    Every label token weighs the same, so a category's loss is its total loss over its tokens.

    Args:
        model: Any causal LM (base or peft).
        examples: Tokenized examples with labels (as for training).
        batch_size: Examples per forward pass.
        autocast: As ``train.autocast``.

    Returns:
        ``loss``, ``perplexity``, ``num_tokens``, and ``loss_by_category`` /
        ``perplexity_by_category`` keyed by category.
    """
    if not examples:
        raise ValueError("evaluate_loss: got no examples")
    device = model_device(model)
    pad_token_id = model_pad_token_id(model)
    loss_sums: dict[str, float] = defaultdict(float)
    token_counts: dict[str, int] = defaultdict(int)
    with eval_mode(model):
        for indices in by_length([len(e.input_ids) for e in examples], batch_size):
            batch = collate([examples[i] for i in indices], pad_token_id)
            rows_tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1).tolist()
            batch = {key: value.to(device) for key, value in batch.items()}
            with autocast_context(device, autocast):
                _, per_row = token_loss_sum(model, batch)
            for index, row_loss, row_tokens in zip(
                indices, per_row.tolist(), rows_tokens, strict=True
            ):
                loss_sums[examples[index].category] += row_loss
                token_counts[examples[index].category] += row_tokens
            report_batch(len(indices))
    total_tokens = sum(token_counts.values())
    loss = sum(loss_sums.values()) / max(total_tokens, 1)
    by_category = {c: loss_sums[c] / max(token_counts[c], 1) for c in sorted(loss_sums)}
    return {
        "loss": loss,
        "perplexity": _perplexity(loss),
        "num_tokens": total_tokens,
        "loss_by_category": by_category,
        "perplexity_by_category": {c: _perplexity(v) for c, v in by_category.items()},
    }


def keep_tail(row: list[int], limit: int, keep_first: bool) -> list[int]:
    """The last ``limit`` items of ``row``; with ``keep_first``, its first item (BOS) and the
    last ``limit - 1``. A prompt keeps its end, where the response starts."""
    if len(row) <= limit:
        return row
    head = row[:1] if keep_first else []
    return head + row[len(row) - (limit - len(head)) :]


def warn_cut(cut: int, total: int, what: str, limit: int) -> None:
    """Log how many rows were cut to fit the model's context window."""
    if cut:
        logger.warning(
            "%d of %d %s are longer than the model's context window allows (%d tokens): "
            "cut to their last %d tokens",
            cut,
            total,
            what,
            limit,
            limit,
        )


def fit_to_context(
    model: nn.Module, tokenizer: Any, rows: list[list[int]], max_new_tokens: int
) -> list[list[int]]:
    """Prompts cut to their last tokens where they and ``max_new_tokens`` would not fit the
    model's context window (a leading BOS is kept); warns with the count."""
    window = context_window(model, tokenizer)
    if window is None:
        return rows
    limit = max(window - max_new_tokens, 1)
    bos = tokenizer.bos_token_id
    fitted = [keep_tail(row, limit, bos is not None and row[:1] == [bos]) for row in rows]
    warn_cut(
        sum(len(a) != len(b) for a, b in zip(rows, fitted, strict=True)),
        len(rows),
        "prompts",
        limit,
    )
    return fitted


def _left_pad(rows: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T), padded on the left so generation continues
    every row from its last real token."""
    longest = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            input_ids[index, longest - len(row) :] = torch.tensor(row, dtype=torch.long)
            attention_mask[index, longest - len(row) :] = 1
    return input_ids, attention_mask


def _generation_config(model: nn.Module, tokenizer: Any, max_new_tokens: int) -> GenerationConfig:
    """Greedy decoding that stops at the tokenizer's EOS or any EOS the model declares."""
    eos_ids = {tokenizer.eos_token_id}
    declared = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos_ids.update(declared if isinstance(declared, list) else [declared])
    eos_ids.discard(None)
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=sorted(eos_ids),
        pad_token_id=tokenizer.pad_token_id,
    )


def generate_token_ids(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    add_special_tokens: bool = True,
    autocast: str = "auto",
) -> list[list[int]]:
    """Greedy continuations of ``prompts`` as new token ids (up to and including EOS).

    Prompts are tokenized one by one and left-padded here, so the tokenizer is never modified;
    batches group prompts of similar length and results come back in the input order. A prompt
    that would not leave room for ``max_new_tokens`` in the context window keeps only its end
    (``fit_to_context``). Arguments as for ``generate_answers``.
    """
    device = model_device(model)
    encoded = [
        list(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])
        for prompt in prompts
    ]
    encoded = fit_to_context(model, tokenizer, encoded, max_new_tokens)
    generation_config = _generation_config(model, tokenizer, max_new_tokens)
    eos_ids = set(generation_config.eos_token_id or [])
    results: list[list[int]] = [[] for _ in prompts]
    with eval_mode(model):
        for indices in by_length([len(row) for row in encoded], batch_size):
            rows = [encoded[i] for i in indices]
            input_ids, attention_mask = _left_pad(rows, tokenizer.pad_token_id)
            with autocast_context(device, autocast):
                output = model.generate(  # type: ignore[operator]  # every causal LM has generate
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=generation_config,
                )  # (B, T + new)
            for index, new_tokens in zip(
                indices, output[:, input_ids.shape[1] :].tolist(), strict=True
            ):
                results[index] = _cut_at_eos(new_tokens, eos_ids)
            report_batch(len(indices))
    return results


def _cut_at_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """Drop what follows the first EOS (rows that finished early are padded after it)."""
    for position, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: position + 1]
    return tokens


def generate_answers(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    add_special_tokens: bool = True,
    autocast: str = "auto",
) -> list[str]:
    """Greedy completions of ``prompts``: only the new text, special tokens skipped, stripped.

    Args:
        model: Any causal LM (base or peft).
        tokenizer: Its tokenizer (must have a pad token, as ``load_model`` ensures).
        prompts: Full prompt texts, e.g. from ``build_prompt``.
        max_new_tokens: Generation budget per prompt.
        batch_size: Prompts per ``generate`` call (left-padded).
        add_special_tokens: Let the tokenizer add BOS (off for chat-template prompts).
        autocast: As ``train.autocast``.
    """
    if not prompts:
        return []
    token_ids = generate_token_ids(
        model, tokenizer, prompts, max_new_tokens, batch_size, add_special_tokens, autocast
    )
    texts = tokenizer.batch_decode(token_ids, skip_special_tokens=True)
    return [text.strip() for text in texts]


def answer_examples(
    model: nn.Module,
    tokenizer: Any,
    examples: list[Example],
    template: str,
    max_new_tokens: int,
    batch_size: int,
    autocast: str = "auto",
) -> list[str]:
    """Greedy answers to examples, prompted with ``template`` as in training (arguments as
    for ``generate_answers``; the chat template writes its own special tokens)."""
    prompts = [build_prompt(example, template, tokenizer) for example in examples]
    return generate_answers(
        model,
        tokenizer,
        prompts,
        max_new_tokens,
        batch_size,
        add_special_tokens=template != "chat",
        autocast=autocast,
    )


def evaluate_accuracy(
    model: nn.Module,
    tokenizer: Any,
    examples: list[Example],
    template: str,
    max_new_tokens: int,
    batch_size: int,
    score: Callable[[str, str], bool],
    autocast: str = "auto",
) -> dict[str, Any]:
    """Generate an answer for each example and score it against the reference ``output``.

    Args:
        model: Any causal LM (base or peft).
        tokenizer: Its tokenizer.
        examples: Held-out examples (instruction / input / output / category).
        template: ``data.template`` (alpaca or chat), used to build the prompts.
        max_new_tokens: Generation budget per example.
        batch_size: Prompts per ``generate`` call.
        score: ``score(prediction, reference) -> bool``.
        autocast: As ``train.autocast``.

    Returns:
        ``accuracy``, ``num_examples`` and ``accuracy_by_category``.
    """
    if not examples:
        raise ValueError("evaluate_accuracy: got no examples")
    answers = answer_examples(
        model, tokenizer, examples, template, max_new_tokens, batch_size, autocast
    )
    correct: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    for example, answer in zip(examples, answers, strict=True):
        category = example.get("category", "")
        counts[category] += 1
        correct[category] += bool(score(answer, example["output"]))
    return {
        "accuracy": sum(correct.values()) / len(examples),
        "num_examples": len(examples),
        "accuracy_by_category": {c: correct[c] / counts[c] for c in sorted(counts)},
    }
