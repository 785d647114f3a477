"""A model's answers to open, possibly multi-turn questions (Vicuna-bench, MT-Bench), for a judge.

Turn t of every question is answered in one batched pass, with the conversation so far (the
earlier questions and the model's own earlier answers) in the prompt, as FastChat does. Prompts
use the run's template through ``serving.prompts.chat_prompt``, so the model sees exactly what
``fedit serve`` would show it.

Example:
    answers = generate_turn_answers(model, tokenizer, "chat", questions, 256, 8)
    answers[81]  # -> ["answer to turn 1", "answer to turn 2"]
"""

from __future__ import annotations

from typing import Any

from fedit.client.evaluate import generate_answers
from fedit.serving.prompts import adds_special_tokens, chat_prompt


def generate_turn_answers(
    model: Any,
    tokenizer: Any,
    template: str,
    questions: list[Any],
    max_new_tokens: int,
    batch_size: int,
) -> dict[Any, list[str]]:
    """Greedy answers to every turn of every question.

    Args:
        model: Any causal LM (base or peft), with the adapter to judge active.
        tokenizer: Its tokenizer.
        template: ``alpaca`` or ``chat`` (the run's ``data.template``).
        questions: Objects with ``question_id`` and ``turns`` (``judge.JudgeQuestion``).
        max_new_tokens: Generation cap per turn.
        batch_size: Prompts per ``generate`` call.

    Returns:
        ``question_id -> [answer to turn 1, answer to turn 2, ...]``.
    """
    answers: dict[Any, list[str]] = {q.question_id: [] for q in questions}
    max_turns = max((len(q.turns) for q in questions), default=0)
    for turn in range(max_turns):
        asking = [q for q in questions if len(q.turns) > turn]
        prompts = [
            chat_prompt(
                _conversation(q.turns[: turn + 1], answers[q.question_id]), template, tokenizer
            )
            for q in asking
        ]
        replies = generate_answers(
            model,
            tokenizer,
            prompts,
            max_new_tokens,
            batch_size,
            add_special_tokens=adds_special_tokens(template),
        )
        for question, reply in zip(asking, replies, strict=True):
            answers[question.question_id].append(reply)
    return answers


def _conversation(turns: list[str], earlier_answers: list[str]) -> list[dict[str, str]]:
    """User turns interleaved with the model's earlier answers, ending on a user turn."""
    messages: list[dict[str, str]] = []
    for index, turn in enumerate(turns):
        messages.append({"role": "user", "content": turn})
        if index < len(earlier_answers) and index < len(turns) - 1:
            messages.append({"role": "assistant", "content": earlier_answers[index]})
    return messages
