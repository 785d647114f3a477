"""The LLM judge: FastChat templates and questions, grading math checked by hand, retries, the
disk cache, and the whole flow against a real ``fedit serve`` on loopback."""

from __future__ import annotations

import json
import re
import socket
import statistics
import time

import pytest
from judge_support import (
    MAX_TOKENS_LIMIT,
    CountingApp,
    FailFirst,
    FakeJudge,
    judge_config,
    load_engine,
    make_runs,
)

from fedit.config import ConfigError
from fedit.evaluation import judge_client
from fedit.evaluation.judge import (
    JudgeClient,
    JudgeError,
    JudgeQuestion,
    game_outcome,
    grade_pairwise,
    grade_single,
    load_judge_prompts,
    load_judge_questions,
    parse_rating,
    parse_verdict,
    select_template,
)
from fedit.evaluation.judge_client import backoff_delay
from fedit.serving.app import create_app
from fedit.serving.server import running_server

KEY_ENV = "FEDIT_TEST_JUDGE_KEY"
SHORT_TEMPLATES = {  # the real ones do not fit the tiny model's 512-token window
    "single-v1": "Q: {question}\nA: {answer}\nRate 1-10 as [[5]].",
    "single-math-v1": "Q: {question}\nRef: {ref_answer_1}\nA: {answer}\nRate as [[5]].",
    "single-v1-multi-turn": "Q1: {question_1}\nA1: {answer_1}\nQ2: {question_2}\nA2: {answer_2}",
    "single-math-v1-multi-turn": "Q2: {question_2}\nRef: {ref_answer_2}\nA2: {answer_2}",
    "pair-v2": "Q: {question}\nA: {answer_a}\nB: {answer_b}\nSay [[A]], [[B]] or [[C]].",
    "pair-v2-multi-turn": "Q2: {question_2}\nA: {answer_a_2}\nB: {answer_b_2}",
    "pair-math-v1": "Q: {question}\nRef: {ref_answer_1}\nA: {answer_a}\nB: {answer_b}",
    "pair-math-v1-multi-turn": "Q2: {question_2}\nRef: {ref_answer_2}\nA: {answer_a_2}\n"
    "B: {answer_b_2}",
}
QUESTIONS = [
    JudgeQuestion(1, "generic", ["How do I sleep better?"]),
    JudgeQuestion(2, "math", ["What is 2 + 2?"], reference=["4"]),
    JudgeQuestion(3, "writing", ["Write a haiku.", "Now make it rhyme."]),
]


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(judge_client, "BASE_DELAY_S", 0.001)


@pytest.fixture(scope="module")
def short_prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "judge_prompts.jsonl"
    records = [
        {
            "name": name,
            "type": "single" if name.startswith("single") else "pairwise",
            "system_prompt": "You are a judge.",
            "prompt_template": template,
            "category": "math" if "math" in name else "general",
            "output_format": "[[rating]]",
        }
        for name, template in SHORT_TEMPLATES.items()
    ]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return load_judge_prompts(path)


@pytest.fixture(scope="module")
def real_prompts(shared_data):
    return load_judge_prompts(shared_data / "judge_prompts.jsonl")


def _free_closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _scripted(script: dict[str, list[str]]):
    """A reply function: the next reply for the last ``ANSWER-x`` marker in the prompt."""

    def reply(messages):
        return script[re.findall(r"ANSWER-\w+", messages[-1]["content"])[-1]].pop(0)

    return reply


# --- parsing and aggregation, against a scripted judge -------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Rating: [[8]]", 8.0),
        ("[[8.5]]", 8.5),
        ("fallback [7]", 7.0),
        ("[[3]] no, [[6]]", 6.0),
        ("[[11]]", None),
        ("[[0]]", None),
        ("Rating: 8/10", None),
        ("", None),
    ],
)
def test_parse_rating(reply, expected):
    assert parse_rating(reply) == expected


def test_parse_verdict_and_both_order_outcome():
    assert [parse_verdict(r) for r in ("[[A]]", "so [[B]].", "[[C]]", "A is better")] == [
        "A",
        "B",
        "C",
        None,
    ]
    assert game_outcome("A", "B") == "win"  # a first, then a second: a both times
    assert game_outcome("B", "A") == "loss"
    assert game_outcome("C", "C") == "tie"
    assert game_outcome("A", "A") == "inconsistent"  # position A wins both times
    assert game_outcome("A", "C") == "inconsistent"
    assert game_outcome(None, "B") == "failed"


def test_single_grading_math_by_hand(short_prompts, tmp_path):
    script = {
        "ANSWER-1": ["Rating: [[8]]", "[[6]]"],
        "ANSWER-2": ["I'd give it [5]", "junk"],
        "ANSWER-3a": ["[[9.5]]", "[[9.5]]"],
        "ANSWER-3b": ["[[11]]", "Rating: [[4]]"],
    }
    fake = FakeJudge(_scripted(script))
    answers = {1: ["ANSWER-1"], 2: ["ANSWER-2"], 3: ["ANSWER-3a", "ANSWER-3b"]}
    with running_server(fake.app) as url:
        client = JudgeClient(judge_config(f"{url}/v1", tmp_path, concurrency=1))
        result = grade_single(client, short_prompts, QUESTIONS, answers, repeats=2)
    assert json.loads(json.dumps(result)) == result
    assert fake.chat_requests == result["num_judgments"] == 8
    assert result["score"] == pytest.approx((8 + 6 + 5 + 9.5 + 9.5 + 4) / 6)
    assert result["score_std"] == pytest.approx(statistics.pstdev([7.5, 6.5]))
    q1, q2, q3 = result["per_question"]
    assert (q1["mean"], q1["std"]) == (7.0, 1.0)
    assert (q2["mean"], q2["std"]) == (5.0, 0.0)
    assert q3["mean"] == pytest.approx(23 / 3)
    assert q3["std"] == pytest.approx(statistics.pstdev([9.5, (9.5 + 4) / 2]))
    assert result["score_std_per_question"] == pytest.approx((1.0 + 0.0 + 1.375) / 3)
    assert result["score_by_category"] == {
        "generic": 7.0,
        "math": 5.0,
        "writing": pytest.approx(23 / 3),
    }
    assert result["score_by_turn"] == {"1": pytest.approx(7.6), "2": 4.0}
    assert (result["num_scored"], result["parse_failures"], result["request_failures"]) == (6, 2, 0)
    junk = q2["turns"][0]["judgments"][1]
    assert junk == {"repeat": 1, "rating": None, "reply": "junk", "error": "parse"}
    assert q3["turns"][1]["judgments"][0]["reply"] == "[[11]]"
    assert [t["template"] for t in q3["turns"]] == ["single-v1", "single-v1-multi-turn"]
    assert q2["turns"][0]["template"] == "single-math-v1"
    math_prompt = next(b for b in fake.bodies if "ANSWER-2" in b["messages"][1]["content"])
    assert "Ref: 4" in math_prompt["messages"][1]["content"]


def test_pairwise_both_orders_and_win_rate(short_prompts, tmp_path):
    verdicts = {
        "A-1": "[[A]]",
        "B-1": "[[B]]",  # a wins in both orders
        "A-2": "[[A]]",
        "B-2": "[[A]]",  # position A wins: inconsistent, a tie
        "A-3": "[[C]]",
        "B-3": "[[C]]",  # tie
        "A-4": "[[B]]",
        "B-4": "[[A]]",  # b wins in both orders
        "A-5": "no idea",
        "B-5": "[[A]]",
    }
    categories = ["generic", "generic", "math", "writing", "writing"]

    def reply(messages):
        return verdicts[re.search(r"A: (\S+)", messages[-1]["content"]).group(1)]

    questions = [JudgeQuestion(i, cat, [f"q{i}"]) for i, cat in enumerate(categories, 1)]
    answers_a = {i: [f"A-{i}"] for i in range(1, 6)}
    answers_b = {i: [f"B-{i}"] for i in range(1, 6)}
    fake = FakeJudge(reply)
    with running_server(fake.app) as url:
        client = JudgeClient(judge_config(f"{url}/v1", tmp_path))
        result = grade_pairwise(
            client, short_prompts, questions, answers_a, answers_b, 1, names=("fedit", "local")
        )
    assert fake.chat_requests == 10
    assert (result["wins"], result["losses"], result["ties"], result["inconsistent"]) == (
        1,
        1,
        2,
        1,
    )
    assert result["names"] == ["fedit", "local"]
    assert result["num_decided"] == 4 and result["num_judgments"] == 5
    assert result["win_rate"] == pytest.approx((1 + 0.5 * 2) / 4)
    assert result["win_rate_by_category"] == {"generic": 0.75, "math": 0.5, "writing": 0.0}
    assert (result["parse_failures"], result["request_failures"]) == (1, 0)
    failed = result["per_question"][4]["turns"][0]["games"][0]
    assert failed["outcome"] == "failed" and failed["replies"] == ["no idea", "[[A]]"]
    assert failed["errors"] == ["parse", None]


def test_missing_answer_names_the_question(short_prompts, tmp_path):
    client = JudgeClient(judge_config(None, tmp_path))
    with pytest.raises(ConfigError, match="question_id 3"):
        grade_single(client, short_prompts, QUESTIONS, {1: ["x"], 2: ["y"]}, repeats=1)
    with pytest.raises(ConfigError, match="question_id 3: 2 turns"):
        grade_single(client, short_prompts, QUESTIONS, {1: ["x"], 2: ["y"], 3: ["z"]}, 1)
    with pytest.raises(ConfigError, match="no b answer for question_id 1"):
        grade_pairwise(client, short_prompts, QUESTIONS[:1], {1: ["x"]}, {}, 1)


# --- retries, failures and the cache ---------------------------------------------------------


def test_backoff_doubles_is_capped_and_honours_retry_after():
    assert [backoff_delay(retry) for retry in range(3)] == [0.5, 1.0, 2.0]
    assert backoff_delay(20) == judge_client.MAX_DELAY_S
    assert backoff_delay(0, retry_after=3.0) == 3.0
    assert backoff_delay(0, retry_after=1e6) == judge_client.MAX_RETRY_AFTER_S


@pytest.mark.parametrize("status", [503, 429])
def test_retries_until_the_judge_answers(status, short_prompts, tmp_path, fast_retries):
    fake = FakeJudge(lambda messages: "[[7]]", fail_first=2, fail_status=status)
    with running_server(fake.app) as url:
        client = JudgeClient(judge_config(f"{url}/v1", tmp_path))
        result = grade_single(client, short_prompts, QUESTIONS[:1], {1: ["fine"]}, repeats=1)
    assert result["score"] == 7.0 and result["request_failures"] == 0
    assert client.stats == {"requests_sent": 3, "cache_hits": 0, "retries": 2, "failures": 0}
    assert fake.chat_requests == 3


def test_retry_after_zero_is_obeyed(short_prompts, tmp_path):
    fake = FakeJudge(lambda messages: "[[7]]", fail_first=2, fail_status=429)
    with running_server(fake.app) as url:
        client = JudgeClient(judge_config(f"{url}/v1", tmp_path))
        start = time.monotonic()
        client.complete([[{"role": "user", "content": "hi"}]])
        elapsed = time.monotonic() - start
    assert client.stats["retries"] == 2
    assert elapsed < 1.0  # the default backoff would sleep 0.5 + 1.0 s


def test_failing_judge_counts_request_failures_then_cache_resumes(
    short_prompts, tmp_path, fast_retries
):
    fake = FakeJudge(lambda messages: "Rating: [[6]]", fail_first=10**6)
    answers = {1: ["a"], 2: ["b"], 3: ["c", "d"]}
    with running_server(fake.app) as url:
        client = JudgeClient(judge_config(f"{url}/v1", tmp_path, max_retries=2))
        result = grade_single(client, short_prompts, QUESTIONS, answers, repeats=1)
        assert result["request_failures"] == 4 and result["score"] is None
        assert result["num_scored"] == 0 and result["parse_failures"] == 0
        assert client.stats == {"requests_sent": 12, "cache_hits": 0, "retries": 8, "failures": 4}
        assert fake.chat_requests == 12
        errors = [
            j["error"] for q in result["per_question"] for t in q["turns"] for j in t["judgments"]
        ]
        assert errors == ["request"] * 4

        # a run cut short: the first two requests fail for good, the other two are cached
        fake.chat_requests, fake.fail_first = 0, 2
        cfg = judge_config(f"{url}/v1", tmp_path / "resume", max_retries=0, concurrency=1)
        client = JudgeClient(cfg)
        cut = grade_single(client, short_prompts, QUESTIONS, answers, repeats=1)
        assert (cut["request_failures"], cut["num_scored"]) == (2, 2)
        resumed_client = JudgeClient(cfg)
        resumed = grade_single(resumed_client, short_prompts, QUESTIONS, answers, repeats=1)
        assert resumed["num_scored"] == 4 and resumed["score"] == 6.0
        assert resumed_client.stats["requests_sent"] == 2
        assert resumed_client.stats["cache_hits"] == 2
        again_client = JudgeClient(cfg)
        again = grade_single(again_client, short_prompts, QUESTIONS, answers, repeats=1)
    assert again == resumed and again_client.stats["requests_sent"] == 0
    assert fake.chat_requests == 4 + 2  # the cut run, then only its two failures


def test_cache_is_keyed_without_the_url_and_separates_repeats(short_prompts, tmp_path):
    fake = FakeJudge(lambda messages: "[[9]]")
    answers = {1: ["a"], 2: ["b"], 3: ["c", "d"]}
    with running_server(fake.app) as url:
        first = JudgeClient(judge_config(f"{url}/v1", tmp_path))
        result = grade_single(first, short_prompts, QUESTIONS, answers, repeats=3)
    assert fake.chat_requests == 12 == first.stats["requests_sent"]  # repeats are not shared
    closed = f"http://127.0.0.1:{_free_closed_port()}/v1"
    second = JudgeClient(judge_config(closed, tmp_path))
    assert grade_single(second, short_prompts, QUESTIONS, answers, repeats=3) == result
    assert second.stats == {"requests_sent": 0, "cache_hits": 12, "retries": 0, "failures": 0}
    other_model = JudgeClient(judge_config(None, tmp_path, model="gpt-4"))
    with pytest.raises(JudgeError, match="no judge configured"):
        grade_single(other_model, short_prompts, QUESTIONS, answers, repeats=3)


# --- errors ----------------------------------------------------------------------------------


def _one_line_error(client: JudgeClient) -> str:
    with pytest.raises(JudgeError) as caught:
        client.check()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_no_base_url_and_unreachable_judge(tmp_path):
    message = _one_line_error(JudgeClient(judge_config(None, tmp_path)))
    assert message.startswith("eval.judge.base_url: no judge configured")
    closed = f"http://127.0.0.1:{_free_closed_port()}/v1"
    message = _one_line_error(JudgeClient(judge_config(closed, tmp_path)))
    assert message == f"eval.judge.base_url: cannot reach {closed} (connection refused)"


def test_unknown_model_and_wrong_path(tmp_path):
    fake = FakeJudge(lambda messages: "[[5]]", models=("gpt-4", "other"))
    with running_server(fake.app) as url:
        message = _one_line_error(JudgeClient(judge_config(f"{url}/v1", tmp_path)))
        assert message.startswith("eval.judge.model: 'judge' is not served by")
        assert "gpt-4, other" in message
        client = JudgeClient(judge_config(f"{url}/v1", tmp_path))
        with pytest.raises(JudgeError, match="eval.judge.model: .* does not serve 'judge'"):
            client.complete([[{"role": "user", "content": "hi"}]])
        message = _one_line_error(JudgeClient(judge_config(url, tmp_path, model="gpt-4")))
        assert "expected the API root" in message


# --- the whole flow against a real ``fedit serve`` --------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    return load_engine(make_runs(tiny_model_dir, tmp_path_factory.mktemp("judge-runs")))


@pytest.fixture(scope="module")
def served(engine):
    counting = CountingApp(create_app(engine, max_tokens_limit=MAX_TOKENS_LIMIT))
    with running_server(counting) as url:
        yield counting, f"{url}/v1"


def test_wrong_api_key_on_fedit_serve(engine, tmp_path, monkeypatch):
    with running_server(create_app(engine, api_key="secret")) as url:
        client = JudgeClient(judge_config(f"{url}/v1", tmp_path, model="global"))
        assert "needs an API key (401); set $FEDIT_TEST_JUDGE_KEY" in _one_line_error(client)
        monkeypatch.setenv(KEY_ENV, "wrong")
        client = JudgeClient(judge_config(f"{url}/v1", tmp_path, model="global"))
        message = _one_line_error(client)
        assert message.startswith("eval.judge.api_key_env:")
        assert "rejected the API key in $FEDIT_TEST_JUDGE_KEY" in message
        with pytest.raises(JudgeError, match="FEDIT_TEST_JUDGE_KEY"):
            client.complete([[{"role": "user", "content": "hi"}]])
        monkeypatch.setenv(KEY_ENV, "secret")
        JudgeClient(judge_config(f"{url}/v1", tmp_path, model="global")).check()


def test_flow_on_fedit_serve_counts_junk_and_caches(served, short_prompts, tmp_path):
    counting, url = served
    cfg = judge_config(url, tmp_path, model="global", max_tokens=16, concurrency=2)
    answers = {1: ["Keep a schedule."], 2: ["4"], 3: ["Old pond.", "Frog jumps."]}
    client = JudgeClient(cfg)
    client.check()
    before = counting.chat_requests
    result = grade_single(client, short_prompts, QUESTIONS, answers, repeats=1)
    assert counting.chat_requests - before == client.stats["requests_sent"] == 4
    assert result["judge_model"] == "global" and result["request_failures"] == 0
    judgments = [j for q in result["per_question"] for t in q["turns"] for j in t["judgments"]]
    assert all(isinstance(j["reply"], str) for j in judgments)  # raw junk kept
    assert result["parse_failures"] == 4 and result["num_scored"] == 0
    assert result["score"] is None and result["score_by_category"] == {}
    assert all(j["error"] == "parse" and j["rating"] is None for j in judgments)

    pairwise = grade_pairwise(client, short_prompts, QUESTIONS[:1], answers, {1: ["No."]}, 1)
    assert counting.chat_requests - before == 6
    assert pairwise["num_decided"] == 0 and pairwise["win_rate"] is None
    assert pairwise["parse_failures"] == 2

    rerun = JudgeClient(cfg)
    assert grade_single(rerun, short_prompts, QUESTIONS, answers, repeats=1) == result
    assert counting.chat_requests - before == 6 and rerun.stats["requests_sent"] == 0


def test_prompt_too_long_for_the_judge_is_a_request_failure(served, real_prompts, tmp_path):
    counting, url = served
    client = JudgeClient(judge_config(url, tmp_path, model="global", max_tokens=16))
    before = counting.chat_requests
    result = grade_single(client, real_prompts, QUESTIONS[:1], {1: ["Sleep."]}, repeats=1)
    assert result["request_failures"] == 1 and result["score"] is None
    assert client.stats["retries"] == 0  # a 400 is not retried
    assert counting.chat_requests - before == 1


# --- the real FastChat files ----------------------------------------------------------------


def test_vicuna_questions_with_gpt4_references(shared_data, real_prompts):
    folder = shared_data / "vicuna_bench"
    questions = load_judge_questions(
        folder / "question.jsonl", folder / "reference_answer_gpt-4.jsonl"
    )
    assert len(questions) == 80 and all(len(q.turns) == 1 for q in questions)
    with_reference = [q for q in questions if q.reference]
    assert len(with_reference) == 10
    assert {q.category for q in with_reference} == {"math", "coding"}
    templates = {select_template(q, "single", 1) for q in with_reference}
    assert templates == {"single-math-v1"}
    generic = next(q for q in questions if q.category == "generic")
    assert select_template(generic, "single", 1) == "single-v1"
    assert select_template(generic, "pairwise", 1) == "pair-v2"
    assert select_template(with_reference[0], "pairwise", 1) == "pair-math-v1"
    assert set(real_prompts) >= set(SHORT_TEMPLATES)


def test_mt_bench_two_turns_and_template_choice(shared_data, real_prompts, tmp_path):
    questions = load_judge_questions(shared_data / "mt_bench" / "question.jsonl")
    assert len(questions) == 80 and all(len(q.turns) == 2 for q in questions)
    by_category = {q.category: q for q in questions if q.reference}
    reasoning, extraction = by_category["reasoning"], by_category["extraction"]
    assert select_template(reasoning, "single", 2) == "single-math-v1-multi-turn"
    assert select_template(reasoning, "pairwise", 2) == "pair-math-v1-multi-turn"
    assert select_template(extraction, "single", 1) == "single-v1"  # references only for math
    writing = next(q for q in questions if q.category == "writing")
    assert select_template(writing, "single", 2) == "single-v1-multi-turn"
    assert select_template(writing, "pairwise", 2) == "pair-v2-multi-turn"

    fake = FakeJudge(lambda messages: "[[5]]")
    with running_server(fake.app) as url:
        client = JudgeClient(judge_config(f"{url}/v1", tmp_path))
        answers = {reasoning.question_id: ["first answer", "second answer"]}
        result = grade_single(client, real_prompts, [reasoning], answers, repeats=1)
    assert result["score_by_turn"] == {"1": 5.0, "2": 5.0}
    # Requests run concurrently: find turn 2's by its content, not by arrival order.
    turn_2 = next(
        body["messages"]
        for body in fake.bodies
        if "second answer" in body["messages"][1]["content"]
    )
    assert turn_2[0]["content"] == real_prompts["single-math-v1-multi-turn"].system_prompt
    for text in (*reasoning.turns, *reasoning.reference, "first answer", "second answer"):
        assert text in turn_2[1]["content"]


def test_bad_files_name_the_file_and_line(tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 1, "category": "x", "turns": ["a"]}\n{oops\n')
    with pytest.raises(ConfigError, match=r"q\.jsonl:2: invalid JSON"):
        load_judge_questions(questions)
    questions.write_text('{"question_id": 1, "category": "x", "turns": []}\n')
    with pytest.raises(ConfigError, match=r"q\.jsonl:1: question 1: 'turns'"):
        load_judge_questions(questions)
    questions.write_text('{"question_id": 1, "category": "x", "turns": ["a"]}\n' * 2)
    with pytest.raises(ConfigError, match=r"q\.jsonl:2: duplicate question_id 1"):
        load_judge_questions(questions)
    references = tmp_path / "ref.jsonl"
    references.write_text('{"question_id": 1, "choices": []}\n')
    with pytest.raises(ConfigError, match=r"ref\.jsonl:1: expected question_id and choices"):
        load_judge_questions(questions, references)
    with pytest.raises(ConfigError, match="missing.jsonl: question file not found"):
        load_judge_questions(tmp_path / "missing.jsonl")
    prompts = tmp_path / "p.jsonl"
    record = {
        "name": "single-v1",
        "type": "single",
        "system_prompt": "",
        "category": "general",
        "prompt_template": "{question} {answer}",
        "output_format": "[[rating]]",
    }
    prompts.write_text(json.dumps(record) + "\n")
    with pytest.raises(
        ConfigError, match="missing judge templates single-v1-multi-turn, single-math-v1, "
    ):
        load_judge_prompts(prompts)
    assert list(load_judge_prompts(prompts, required=["single-v1"])) == ["single-v1"]
    prompts.write_text(json.dumps({**record, "prompt_template": "{question} {answr}"}) + "\n")
    with pytest.raises(ConfigError, match=r"p\.jsonl:1: template 'single-v1' uses unknown"):
        load_judge_prompts(prompts, required=["single-v1"])


@pytest.mark.parametrize("status", [503, 429])
def test_fedit_serve_behind_errors_is_retried(
    status, engine, short_prompts, tmp_path, fast_retries
):
    """The real server as judge, answering ``status`` to the first two requests."""
    counting = CountingApp(create_app(engine, max_tokens_limit=MAX_TOKENS_LIMIT))
    failing = FailFirst(counting, count=2, status=status)
    with running_server(failing) as url:
        client = JudgeClient(judge_config(f"{url}/v1", tmp_path, model="global", max_tokens=16))
        client.check()
        result = grade_single(client, short_prompts, QUESTIONS[:1], {1: ["Plan."]}, repeats=1)
    assert failing.failed == 2 and counting.chat_requests == 1  # the third attempt got through
    assert client.stats["retries"] == 2 and client.stats["requests_sent"] == 3
    assert result["request_failures"] == 0 and result["num_judgments"] == 1
    assert result["parse_failures"] == 1  # the tiny model's reply is junk, counted, not scored
