"""LLM-as-judge grading as in FastChat's MT-Bench: questions, prompt templates, single and pairwise.

The FedIT paper scores its models with GPT-4 as the judge on the Vicuna questions, following
FastChat. This module reproduces that protocol for any OpenAI-compatible judge
(:class:`~fedit.evaluation.judge_client.JudgeClient`):

- **Templates** (FastChat's ``judge_prompts.jsonl``): math/reasoning/coding questions with a
  reference answer use the ``*-math-v1*`` templates; turn 1 is graded with the single-turn
  template and turn 2 of a two-turn question with the ``-multi-turn`` one; otherwise
  ``single-v1`` / ``pair-v2``.
- **Single grading**: a 1-10 rating from ``[[8]]`` or ``[[8.5]]`` (fallback ``[8]``). As in the
  templates the verdict follows the explanation, the last marker in a reply counts. Ratings
  outside 1-10 and replies without one are parse failures: counted, their raw text kept in
  ``per_question``, never scored.
- **Pairwise**: every game is asked in both orders; a win counts only if both orders agree,
  anything else is a tie (counted as ``inconsistent`` too), FastChat's answer to position bias.
  A game with a failed or unparseable reply is not decided and not counted as a tie.
- **Repeats**: every judgment is asked ``repeats`` times (distinct cache keys); results give the
  mean and the spread across repeats.

Example:
    prompts = load_judge_prompts(Path("judge_prompts.jsonl"))
    questions = load_judge_questions(Path("vicuna_bench/question.jsonl"),
                                     Path("vicuna_bench/reference_answer_gpt-4.jsonl"))
    client = JudgeClient(cfg.eval.judge)
    client.check()
    result = grade_single(client, prompts, questions, {1: ["answer to question 1"], ...}, 3)
"""

from __future__ import annotations

import logging
import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from fedit.config import ConfigError
from fedit.evaluation.judge_client import JudgeClient, JudgeError
from fedit.evaluation.judge_data import (
    JudgePrompt,
    JudgeQuestion,
    QuestionId,
    _messages,
    load_judge_prompts,
    load_judge_questions,
    parse_rating,
    parse_verdict,
    select_template,
)

__all__ = [
    "JudgeClient",
    "JudgeError",
    "JudgePrompt",
    "JudgeQuestion",
    "grade_pairwise",
    "grade_single",
    "load_judge_prompts",
    "load_judge_questions",
    "parse_rating",
    "parse_verdict",
    "select_template",
]

logger = logging.getLogger(__name__)


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.fmean(values) if values else None


def _spread(values: Iterable[float | None]) -> float | None:
    """Population std of the values that exist (0.0 for one value, None for none)."""
    present = [value for value in values if value is not None]
    return statistics.pstdev(present) if present else None


def _failures(replies: list[str | None], parsed: list[Any]) -> dict[str, int]:
    """Replies that came but did not parse, and requests that got no reply."""
    unparsed = sum(r is not None and p is None for r, p in zip(replies, parsed, strict=True))
    return {"parse_failures": unparsed, "request_failures": replies.count(None)}


def _check_answers(
    questions: list[JudgeQuestion], answers: dict[QuestionId, list[str]], name: str
) -> None:
    for question in questions:
        turns = answers.get(question.question_id)
        if turns is None:
            raise ConfigError(f"no {name} answer for question_id {question.question_id!r}")
        if not isinstance(turns, list) or len(turns) < len(question.turns):
            raise ConfigError(
                f"question_id {question.question_id!r}: {len(question.turns)} turns but the "
                f"{name} answer has {len(turns) if isinstance(turns, list) else 0}"
            )


def _jobs(questions: list[JudgeQuestion], repeats: int) -> list[tuple[JudgeQuestion, int, int]]:
    """(question, turn, repeat) of every judgment, question by question."""
    if repeats < 1:
        raise ConfigError(f"eval.judge.repeats: must be >= 1, got {repeats}")
    return [
        (q, turn, r)
        for q in questions
        for turn in range(1, len(q.turns) + 1)
        for r in range(repeats)
    ]


def _turn_record(
    records: dict[QuestionId, dict[str, Any]],
    question: JudgeQuestion,
    turn: int,
    template: str,
    key: str,
) -> list[dict[str, Any]]:
    """The list of judgments (``key``) of one question's turn, created on first use."""
    record = records.setdefault(
        question.question_id,
        {"question_id": question.question_id, "category": question.category, "turns": {}},
    )
    turn_record = record["turns"].setdefault(turn, {"turn": turn, "template": template, key: []})
    return turn_record[key]


def _error(reply: str | None, parsed: Any) -> str | None:
    return "request" if reply is None else ("parse" if parsed is None else None)


def _prompt(prompts: dict[str, JudgePrompt], name: str) -> JudgePrompt:
    if name not in prompts:
        raise ConfigError(f"eval.judge.prompts: the judge template {name!r} is missing")
    return prompts[name]


def _finish_records(
    records: dict[QuestionId, dict[str, Any]], questions: list[JudgeQuestion]
) -> list[dict[str, Any]]:
    """Per-question records in question order, turns as a list."""
    finished = []
    for question in questions:
        record = records[question.question_id]
        record["turns"] = [record["turns"][turn] for turn in sorted(record["turns"])]
        finished.append(record)
    return finished


def grade_single(
    client: JudgeClient,
    prompts: dict[str, JudgePrompt],
    questions: list[JudgeQuestion],
    answers: dict[QuestionId, list[str]],
    repeats: int,
) -> dict[str, Any]:
    """Grade each answer turn 1-10, ``repeats`` times (MT-Bench single-answer grading).

    Args:
        client: The judge.
        prompts: FastChat templates (:func:`load_judge_prompts`).
        questions: The questions; every one must have an answer.
        answers: question_id -> the judged model's answer to each turn.
        repeats: Times each judgment is asked.

    Returns:
        JSON-serialisable: ``mode``, ``judge_model``, ``score`` (mean of all ratings, None if
        none parsed), ``score_std`` (std across repeats of the overall mean),
        ``score_std_per_question`` (mean over questions of the std across repeats),
        ``score_by_category``, ``score_by_turn`` (``"1"``, ``"2"``), ``num_questions``,
        ``num_judgments``, ``num_scored``, ``parse_failures``, ``request_failures`` and
        ``per_question`` (each judgment's rating, raw reply and error).

    Raises:
        ConfigError: A question without an answer (naming its id), or a missing template.
    """
    _check_answers(questions, answers, "judged")
    jobs = _jobs(questions, repeats)
    templates = [select_template(q, "single", turn) for q, turn, _ in jobs]
    requests = [
        _messages(_prompt(prompts, name), q, {"": answers[q.question_id]})
        for (q, _, _), name in zip(jobs, templates, strict=True)
    ]
    replies = client.complete(requests, [repeat for _, _, repeat in jobs])
    ratings = [None if reply is None else parse_rating(reply) for reply in replies]
    summary = _summarise_single(questions, jobs, templates, replies, ratings, repeats)
    return {"mode": "single", "judge_model": client.cfg.model, **summary}


def _summarise_single(
    questions: list[JudgeQuestion],
    jobs: list[tuple[JudgeQuestion, int, int]],
    templates: list[str],
    replies: list[str | None],
    ratings: list[float | None],
    repeats: int,
) -> dict[str, Any]:
    """Per-question records and the means and spreads of :func:`grade_single`."""
    records: dict[QuestionId, dict[str, Any]] = {}
    by_category: dict[str, list[float]] = defaultdict(list)
    by_turn: dict[str, list[float]] = defaultdict(list)
    by_repeat: dict[int, list[float]] = defaultdict(list)
    by_question: dict[QuestionId, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (q, turn, repeat), name, reply, rating in zip(
        jobs, templates, replies, ratings, strict=True
    ):
        _turn_record(records, q, turn, name, "judgments").append(
            {"repeat": repeat, "rating": rating, "reply": reply, "error": _error(reply, rating)}
        )
        if rating is not None:
            by_category[q.category].append(rating)
            by_turn[str(turn)].append(rating)
            by_repeat[repeat].append(rating)
            by_question[q.question_id][repeat].append(rating)
    per_question = _finish_records(records, questions)
    for record in per_question:
        per_repeat = by_question[record["question_id"]]
        record["mean"] = _mean(r for ratings_ in per_repeat.values() for r in ratings_)
        record["std"] = _spread(_mean(per_repeat[repeat]) for repeat in range(repeats))
    scored = [rating for rating in ratings if rating is not None]
    return {
        "score": _mean(scored),
        "score_std": _spread(_mean(by_repeat[repeat]) for repeat in range(repeats)),
        "score_std_per_question": _mean(r["std"] for r in per_question if r["std"] is not None),
        "score_by_category": {c: _mean(v) for c, v in sorted(by_category.items())},
        "score_by_turn": {t: _mean(v) for t, v in sorted(by_turn.items())},
        "num_questions": len(questions),
        "num_judgments": len(jobs),
        "num_scored": len(scored),
        **_failures(replies, ratings),
        "per_question": per_question,
    }


def game_outcome(verdict_ab: str | None, verdict_ba: str | None) -> str:
    """Outcome for the first model of a game asked as (A=first, B=second) and swapped.

    Returns:
        ``win``/``loss``/``tie`` when both orders agree, ``inconsistent`` when they do not
        (counted as a tie), ``failed`` when either verdict is missing (not decided).
    """
    if verdict_ab is None or verdict_ba is None:
        return "failed"
    first = {"A": "win", "B": "loss", "C": "tie"}[verdict_ab]
    second = {"A": "loss", "B": "win", "C": "tie"}[verdict_ba]
    return first if first == second else "inconsistent"


def _tally(outcomes: list[str]) -> dict[str, Any]:
    """wins, losses, ties (inconsistent included), inconsistent and the win rate."""
    wins, losses = outcomes.count("win"), outcomes.count("loss")
    inconsistent = outcomes.count("inconsistent")
    ties = outcomes.count("tie") + inconsistent
    decided = wins + losses + ties
    win_rate = (wins + 0.5 * ties) / decided if decided else None
    return {
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "inconsistent": inconsistent,
        "decided": decided,
        "win_rate": win_rate,
    }


def grade_pairwise(
    client: JudgeClient,
    prompts: dict[str, JudgePrompt],
    questions: list[JudgeQuestion],
    answers_a: dict[QuestionId, list[str]],
    answers_b: dict[QuestionId, list[str]],
    repeats: int,
    names: tuple[str, str] = ("a", "b"),
) -> dict[str, Any]:
    """Compare two models' answers turn by turn, both orders, ``repeats`` times.

    Returns:
        JSON-serialisable, counted for ``names[0]``: ``mode``, ``judge_model``, ``names``,
        ``wins``, ``losses``, ``ties`` (inconsistent games included), ``inconsistent``,
        ``win_rate`` ((wins + ties / 2) / decided games, None if none), ``win_rate_std``
        (across repeats), ``win_rate_by_category``, ``win_rate_by_turn``, ``num_questions``,
        ``num_judgments`` (games, two requests each), ``num_decided``, ``parse_failures`` and
        ``request_failures`` (replies) and ``per_question`` (verdicts and raw replies).

    Raises:
        ConfigError: A question without an answer from either model, or a missing template.
    """
    _check_answers(questions, answers_a, names[0])
    _check_answers(questions, answers_b, names[1])
    jobs = _jobs(questions, repeats)
    templates = [select_template(q, "pairwise", turn) for q, turn, _ in jobs]
    requests, repeat_ids = [], []
    for (q, _, repeat), name in zip(jobs, templates, strict=True):
        first, second = answers_a[q.question_id], answers_b[q.question_id]
        prompt = _prompt(prompts, name)
        requests += [
            _messages(prompt, q, {"_a": first, "_b": second}),
            _messages(prompt, q, {"_a": second, "_b": first}),
        ]
        repeat_ids += [repeat, repeat]
    replies = client.complete(requests, repeat_ids)
    verdicts = [None if reply is None else parse_verdict(reply) for reply in replies]
    summary = _summarise_pairwise(questions, jobs, templates, replies, verdicts, repeats)
    return {"mode": "pairwise", "judge_model": client.cfg.model, "names": list(names), **summary}


def _summarise_pairwise(
    questions: list[JudgeQuestion],
    jobs: list[tuple[JudgeQuestion, int, int]],
    templates: list[str],
    replies: list[str | None],
    verdicts: list[str | None],
    repeats: int,
) -> dict[str, Any]:
    """Per-question games and the tallies of :func:`grade_pairwise` (two replies per game)."""
    records: dict[QuestionId, dict[str, Any]] = {}
    outcomes: dict[str, dict[Any, list[str]]] = defaultdict(lambda: defaultdict(list))
    for index, ((q, turn, repeat), name) in enumerate(zip(jobs, templates, strict=True)):
        pair = slice(2 * index, 2 * index + 2)
        outcome = game_outcome(*verdicts[pair])
        _turn_record(records, q, turn, name, "games").append(
            {
                "repeat": repeat,
                "outcome": outcome,
                "verdicts": verdicts[pair],
                "replies": replies[pair],
                "errors": [
                    _error(r, v) for r, v in zip(replies[pair], verdicts[pair], strict=True)
                ],
            }
        )
        for group, key in (
            ("all", None),
            ("category", q.category),
            ("turn", str(turn)),
            ("repeat", repeat),
            ("question", q.question_id),
        ):
            outcomes[group][key].append(outcome)
    per_question = _finish_records(records, questions)
    for record in per_question:
        record.update(_tally(outcomes["question"][record["question_id"]]))
    total = _tally(outcomes["all"][None])
    return {
        **{key: total[key] for key in ("wins", "losses", "ties", "inconsistent", "win_rate")},
        "win_rate_std": _spread(_tally(outcomes["repeat"][r])["win_rate"] for r in range(repeats)),
        "win_rate_by_category": {
            c: _tally(v)["win_rate"] for c, v in sorted(outcomes["category"].items())
        },
        "win_rate_by_turn": {t: _tally(v)["win_rate"] for t, v in sorted(outcomes["turn"].items())},
        "num_questions": len(questions),
        "num_judgments": len(jobs),
        "num_decided": total["decided"],
        **_failures(replies, verdicts),
        "per_question": per_question,
    }
