"""``fedit serve`` end to end: a real uvicorn server on loopback, driven by the official ``openai``
client and raw HTTP, checked against greedy answers computed without the server."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from serving_support import MAX_TOKENS_LIMIT, Reference, live_server, load_engine, make_runs

from fedit.serving.app import create_app
from fedit.serving.server import running_server

QUESTION = [{"role": "user", "content": "What is 12 + 35?"}]
CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Sort these numbers: 5, 3, 9"},
    {"role": "assistant", "content": "3, 5, 9"},
    {"role": "user", "content": "Reverse the words: red green blue"},
]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    return make_runs(tiny_model_dir, tmp_path_factory.mktemp("serve-runs"))


@pytest.fixture(scope="module")
def engine(adapters):
    return load_engine(adapters)


@pytest.fixture(scope="module")
def url(engine):
    with live_server(engine) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def references(tiny_model_dir, adapters):
    return {
        "base": Reference(tiny_model_dir, None, "chat"),  # the base takes the global's template
        "global": Reference(tiny_model_dir, adapters["global"], "chat"),
        "local": Reference(tiny_model_dir, adapters["local"], "alpaca"),
    }


def _greedy(client, model, messages, max_tokens=12, **extra):
    return client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=max_tokens, **extra
    )


def _stream_text(client, model, messages, max_tokens=12, **extra):
    stream = _greedy(client, model, messages, max_tokens, stream=True, **extra)
    return list(stream)


def test_models_list_base_global_and_named(client, adapters):
    models = {m.id: m for m in client.models.list().data}
    assert list(models) == ["base", "global", "local"]
    assert models["global"].root == str(adapters["global"])
    assert client.models.retrieve("local").id == "local"


@pytest.mark.parametrize("model", ["base", "global", "local"])
def test_chat_completion_matches_direct_generation(client, references, model):
    expected_text, expected_tokens = references[model].answer(QUESTION, 12)
    response = _greedy(client, model, QUESTION)
    assert response.object == "chat.completion"
    assert response.model == model
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content == expected_text
    usage = response.usage
    assert usage.prompt_tokens == len(references[model].prompt_ids(QUESTION))
    assert usage.completion_tokens == expected_tokens
    assert usage.prompt_tokens + usage.completion_tokens == usage.total_tokens
    assert response.choices[0].finish_reason == ("length" if expected_tokens == 12 else "stop")


def test_adapters_really_switch(client):
    base, tuned = (
        _greedy(client, m, QUESTION).choices[0].message.content for m in ("base", "global")
    )
    assert base != tuned


def test_streaming_matches_non_streaming_and_usage(client):
    whole = _greedy(client, "global", CONVERSATION, max_tokens=16)
    chunks = _stream_text(
        client, "global", CONVERSATION, 16, stream_options={"include_usage": True}
    )
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    deltas = [chunk.choices[0] for chunk in chunks if chunk.choices]
    content = [choice.delta.content for choice in deltas if choice.delta.content is not None]
    assert "".join(content) == whole.choices[0].message.content
    # One content chunk per generated token: the stream's token count is the usage count.
    assert len(content) == whole.usage.completion_tokens > 1
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [choice.finish_reason for choice in deltas if choice.finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump() | {
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
    }


def test_raw_sse_ends_with_done(url):
    body = {"model": "global", "messages": QUESTION, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"][0]["delta"] == {}


def test_multi_turn_uses_the_chat_template_with_all_messages(client, references):
    expected_text, _ = references["global"].answer(CONVERSATION, 10)
    response = _greedy(client, "global", CONVERSATION, max_tokens=10)
    assert response.choices[0].message.content == expected_text
    assert response.usage.prompt_tokens == len(references["global"].prompt_ids(CONVERSATION))


def test_stop_sequence_cuts_the_answer(client):
    full = _greedy(client, "global", QUESTION, max_tokens=20).choices[0].message.content
    stop = full[6:8]
    assert stop and full.index(stop) >= 1
    cut = _greedy(client, "global", QUESTION, max_tokens=20, stop=[stop, "never-seen-xyz"])
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = _stream_text(client, "global", QUESTION, 20, stop=stop)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == full[: full.index(stop)]


def test_seed_makes_sampling_repeatable(client):
    def sample(seed):
        response = client.chat.completions.create(
            model="global", messages=QUESTION, temperature=1.0, top_p=0.9, max_tokens=12, seed=seed
        )
        return response.choices[0].message.content

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in range(4)}) > 1  # sampling does sample


BAD_REQUESTS = {
    "malformed json": (b'{"model": "global", "messages": [', 400, "body"),
    "lone surrogate": (
        b'{"model": "global", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
        400,
        "messages[0].content",
    ),
    "body not an object": (b"[1, 2]", 400, "body"),
    "missing model": ({"messages": QUESTION}, 400, "model"),
    "unknown model": ({"model": "gpt-4", "messages": QUESTION}, 404, "model"),
    "empty messages": ({"model": "global", "messages": []}, 400, "messages"),
    "bad role": (
        {"model": "global", "messages": [{"role": "wizard", "content": "hi"}]},
        400,
        "messages[0].role",
    ),
    "last message not user": (
        {"model": "global", "messages": [*QUESTION, {"role": "assistant", "content": "47"}]},
        400,
        "messages[1].role",
    ),
    "max_tokens above limit": (
        {"model": "global", "messages": QUESTION, "max_tokens": MAX_TOKENS_LIMIT + 1},
        400,
        "max_tokens",
    ),
    "prompt longer than context": (
        {"model": "global", "messages": [{"role": "user", "content": "red green blue " * 300}]},
        400,
        "messages",
    ),
    "temperature out of range": (
        {"model": "global", "messages": QUESTION, "temperature": 3},
        400,
        "temperature",
    ),
    "n above one": ({"model": "global", "messages": QUESTION, "n": 2}, 400, "n"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_bad_request_gets_openai_error_and_server_keeps_answering(url, case):
    payload, status, param = BAD_REQUESTS[case]
    kwargs = {"content": payload} if isinstance(payload, bytes) else {"json": payload}
    for stream in (False, True):
        if stream and isinstance(payload, dict):
            kwargs = {"json": payload | {"stream": True}}
        response = httpx.post(f"{url}/v1/chat/completions", timeout=60, **kwargs)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["message"]
        assert error["param"] == param
    if case == "prompt longer than context":
        assert error["code"] == "context_length_exceeded"
    assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
    ok = {"model": "global", "messages": QUESTION, "max_tokens": 2}
    assert httpx.post(f"{url}/v1/chat/completions", json=ok, timeout=60).status_code == 200


def test_openai_client_raises_its_own_errors(client):
    with pytest.raises(openai.NotFoundError):
        _greedy(client, "no-such-model", QUESTION)
    with pytest.raises(openai.BadRequestError, match="limit"):
        _greedy(client, "global", QUESTION, max_tokens=MAX_TOKENS_LIMIT + 1)


def test_unknown_route_is_json_404(url):
    response = httpx.get(f"{url}/v1/nothing", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["message"]


def test_api_key_required(engine):
    with live_server(engine, api_key="s3cret") as url:
        body = {"model": "global", "messages": QUESTION, "max_tokens": 2}
        endpoint = f"{url}/v1/chat/completions"
        assert httpx.post(endpoint, json=body, timeout=60).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        response = httpx.post(endpoint, json=body, headers=wrong, timeout=60)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert httpx.get(f"{url}/", timeout=10).status_code == 200  # the page asks for the key

        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).models.list()
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert _greedy(good, "global", QUESTION, max_tokens=2).usage.completion_tokens == 2


def test_concurrent_requests_equal_sequential_answers(client):
    jobs = [
        (model, [{"role": "user", "content": f"What is {i} + {i + 7}?"}], stream)
        for i, (model, stream) in enumerate(
            [(m, s) for m in ("base", "global", "local") for s in (False, True)]
        )
    ]

    def run(job):
        model, messages, stream = job
        if stream:
            chunks = _stream_text(client, model, messages, 16)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return _greedy(client, model, messages, max_tokens=16).choices[0].message.content

    sequential = [run(job) for job in jobs]
    barrier = threading.Barrier(len(jobs))

    def run_together(job):
        barrier.wait()
        return run(job)

    with ThreadPoolExecutor(len(jobs)) as pool:
        concurrent = list(pool.map(run_together, jobs))
    assert concurrent == sequential
    assert len(set(sequential)) > 1


def test_client_disconnect_mid_stream_frees_the_model(url, engine):
    body = {"model": "global", "messages": QUESTION, "max_tokens": MAX_TOKENS_LIMIT, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        first = next(response.iter_lines())
        assert first.startswith("data: ")
    deadline = time.monotonic() + 10
    while engine.lock.locked() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not engine.lock.locked()
    ok = {"model": "base", "messages": QUESTION, "max_tokens": 3}
    assert httpx.post(f"{url}/v1/chat/completions", json=ok, timeout=60).status_code == 200


def test_body_over_the_size_limit_is_413_even_with_a_valid_key(engine):
    app = create_app(engine, api_key="s3cret", max_request_bytes=2000)
    auth = {"Authorization": "Bearer s3cret"}
    endpoint = "/v1/chat/completions"
    padded = {"model": "global", "messages": QUESTION, "max_tokens": 2, "user": "x" * 3000}
    with running_server(app) as url:
        response = httpx.post(f"{url}{endpoint}", json=padded, headers=auth, timeout=60)
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "request_too_large"
        assert "2000 bytes" in response.json()["error"]["message"]

        def chunked():  # no Content-Length: counted while it is read
            yield json.dumps(padded).encode()

        response = httpx.post(f"{url}{endpoint}", content=chunked(), headers=auth, timeout=60)
        assert response.status_code == 413
        small = padded | {"user": "x"}
        assert httpx.post(f"{url}{endpoint}", json=small, headers=auth, timeout=60).is_success
