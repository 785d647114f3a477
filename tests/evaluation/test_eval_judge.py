"""``fedit eval`` and ``fedit compare`` with judge suites, against a scripted OpenAI-compatible
judge on loopback (the judge client itself is tested in test_judge.py)."""

from __future__ import annotations

import json

import pytest
from judge_support import FakeJudge

from fedit.cli.main import main
from fedit.evaluation.answers import generate_turn_answers
from fedit.evaluation.judge import JudgeQuestion
from fedit.serving.server import running_server
from helpers import tiny_args


def _verdict(messages: list[dict[str, str]]) -> str:
    """Single grading gets 7; pairwise always prefers the first answer shown (position bias)."""
    return "[[A]]" if "two AI assistants" in messages[0]["content"] else "Rating: [[7]]"


@pytest.fixture
def judge_files(shared_data, tmp_path, monkeypatch):
    """Three Vicuna questions (a folder named like FastChat's) and the real judge templates."""
    monkeypatch.setenv("FEDIT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "vicuna_bench"
    folder.mkdir()
    lines = (shared_data / "vicuna_bench" / "question.jsonl").read_text().splitlines()[:3]
    (folder / "question.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "question.jsonl", shared_data / "judge_prompts.jsonl"


def test_eval_judge_single_and_pairwise_then_cached(tiny_model_dir, tmp_path, judge_files):
    questions, prompts = judge_files
    out = tmp_path / "run"
    assert main(["run", "configs/quickstart.yaml", *tiny_args(tiny_model_dir, out)]) == 0
    fake = FakeJudge(_verdict)
    with running_server(fake.app) as url:
        args = [
            "eval",
            "--adapter",
            str(out / "global_adapter"),
            "--suite",
            f"judge:{questions}",
            "--judge-base-url",
            f"{url}/v1",
            "--judge-model",
            "judge",
            "--judge-prompts",
            str(prompts),
            "--judge-mode",
            "both",
        ]
        assert main(args) == 0
        # 3 single grades + 3 questions x 2 answer orders against the base model; a prompt
        # asked twice (the tiny adapter may answer like the base model) is sent once.
        distinct = {json.dumps(body["messages"]) for body in fake.bodies}
        assert 6 <= fake.chat_requests == len(distinct) <= 9
        sent = fake.chat_requests
        first = json.loads((out / "eval" / "vicuna_bench.json").read_text())
        assert main(args) == 0
        assert fake.chat_requests == sent  # the re-run is served from the judgment cache
    again = json.loads((out / "eval" / "vicuna_bench.json").read_text())
    assert again["single"] == first["single"] and again["answers"] == first["answers"]
    assert set(first["answers"]) == {"1", "2", "3"}
    single = first["single"]
    assert single["score"] == 7.0 and single["num_judgments"] == 3
    assert single["parse_failures"] == 0 and single["request_failures"] == 0
    pair = first["pairwise"]["base"]
    # "[[A]]" in both orders means each answer won once: inconsistent, counted as a tie
    assert pair["inconsistent"] == 3 and pair["ties"] == 3 and pair["win_rate"] == 0.5
    summary = (out / "eval" / "summary.md").read_text()
    assert "pairwise vs base" in summary and "mean 7.000" in summary


def test_compare_with_a_judge_grades_every_model(tiny_model_dir, tmp_path, judge_files):
    questions, prompts = judge_files
    out = tmp_path / "run"
    fake = FakeJudge(_verdict)
    with running_server(fake.app) as url:
        code = main(
            [
                "compare",
                "configs/quickstart.yaml",
                *tiny_args(tiny_model_dir, out),
                "compare.num_local=1",
                f"compare.suites=[heldout,judge:{questions}]",
                f"eval.judge.base_url={url}/v1",
                "eval.judge.model=judge",
                f"eval.judge.prompts={prompts}",
                "eval.judge.mode=both",
                "eval.long_max_new_tokens=8",
            ]
        )
    assert code == 0
    stored = json.loads((out / "compare" / "results.json").read_text())
    names = [m["name"] for m in stored["models"]]
    assert len(names) == 4  # base, local-c, fedit, centralized
    for name in names:
        judged = stored["results"][name]["vicuna_bench"]
        assert judged["single"]["score"] == 7.0
    pairwise = stored["results"]["fedit"]["vicuna_bench"]["pairwise"]
    assert set(pairwise) == set(names) - {"fedit"}
    report = (out / "compare" / "report.md").read_text()
    assert "judge score (1-10)" in report and "pairwise vs centralized" in report


def test_turn_two_sees_the_models_own_first_answer(monkeypatch):
    prompts_seen: list[list[str]] = []

    def fake_generate(model, tokenizer, prompts, *args, **kwargs):
        prompts_seen.append(list(prompts))
        return [f"reply {len(prompts_seen)}.{i}" for i in range(len(prompts))]

    monkeypatch.setattr("fedit.evaluation.answers.generate_answers", fake_generate)
    questions = [
        JudgeQuestion(1, "writing", ["first?", "second?"]),
        JudgeQuestion(2, "generic", ["only?"]),
    ]
    answers = generate_turn_answers(None, None, "alpaca", questions, 8, 4)
    assert answers == {1: ["reply 1.0", "reply 2.0"], 2: ["reply 1.1"]}
    assert len(prompts_seen[0]) == 2 and len(prompts_seen[1]) == 1  # turn 2: question 1 only
    turn_two = prompts_seen[1][0]
    order = [turn_two.index(text) for text in ("first?", "reply 1.0", "second?")]
    assert order == sorted(order)
