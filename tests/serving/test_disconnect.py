"""Clients that leave cost the server nothing: a real uvicorn server, one streaming client that
has read 3 chunks and three that wait in the queue, all gone at once (killed client processes or
closed sockets), and then a new request. What that request waits is counted in model steps
(one step = one generated token), not seconds, so the test does not depend on the machine."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from serving_support import load_engine, make_runs

from fedit.serving.app import create_app
from fedit.serving.engine import CompletionEngine
from fedit.serving.server import running_server

STEP_S = 0.02  # each model step is slowed to this, so a stream outlives the test's checks
LEFT_TOKENS = 300  # what each leaving client asks for: ~6 s of steps if nobody stopped it
KEY = "k3y"
QUESTION = [{"role": "user", "content": "What is 12 + 35?"}]
LEAVING = {"model": "base", "messages": QUESTION, "max_tokens": LEFT_TOKENS, "stream": True}
NEXT = {"model": "base", "messages": QUESTION, "max_tokens": 8}

# A client as a separate process: reads the stream (after `wanted` chunks, or the headers when 0,
# it says so) and goes on reading until it is killed.
CLIENT = """
import json, sys, httpx
url, key, body, wanted = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
headers = {"Authorization": "Bearer " + key} if key else {}
with httpx.stream("POST", url, json=body, headers=headers, timeout=600) as response:
    if wanted == 0:
        print("ready", flush=True)
    for number, _ in enumerate(response.iter_lines(), 1):
        if number == 2 * wanted:  # an event and its blank line per chunk
            print("ready", flush=True)
"""


class StepCounter:
    """Counts the base model's forward passes (one per generated token), each slowed down."""

    def __init__(self) -> None:
        self.steps = 0
        self._lock = threading.Lock()

    def __call__(self, module: Any, args: Any, kwargs: Any) -> None:
        with self._lock:
            self.steps += 1
        time.sleep(STEP_S)


@pytest.fixture(scope="module")
def counted_engine(tiny_model_dir, tmp_path_factory) -> Iterator[tuple[CompletionEngine, Any]]:
    engine = load_engine(make_runs(tiny_model_dir, tmp_path_factory.mktemp("leave-runs")))
    counter = StepCounter()
    base = engine.models.model.get_base_model()
    handle = base.register_forward_pre_hook(counter, with_kwargs=True)
    yield engine, counter
    handle.remove()


@pytest.fixture(params=[None, KEY], ids=["no-key", "api-key"])
def served(request, counted_engine) -> Iterator[tuple[str, str | None, CompletionEngine, Any]]:
    engine, counter = counted_engine
    app = create_app(engine, api_key=request.param, max_tokens_limit=LEFT_TOKENS)
    with running_server(app) as url:
        yield url, request.param, engine, counter


def _client_process(url: str, key: str | None, wanted: int) -> subprocess.Popen[str]:
    endpoint = f"{url}/v1/chat/completions"
    args = [endpoint, key or "", json.dumps(LEAVING), str(wanted)]
    process = subprocess.Popen(
        [sys.executable, "-c", CLIENT, *args], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def _client_socket(url: str, key: str | None, wanted: int, stream: bool = True) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    body = json.dumps(LEAVING | {"stream": stream}).encode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    received = b""
    while stream and (b"\r\n\r\n" not in received or received.count(b"data: ") < wanted):
        received += sock.recv(65536)
    return sock


def _client_not_streamed(url: str, key: str | None, wanted: int) -> socket.socket:
    return _client_socket(url, key, wanted, stream=False)


OPEN_CLIENT = {
    "killed-process": _client_process,
    "closed-socket": _client_socket,
    "closed-socket-not-streamed": _client_not_streamed,
}


def _generating(engine: CompletionEngine) -> int:
    return sum(thread.name == "fedit-generate" for thread in threading.enumerate())


def _next_request_steps(url: str, key: str | None, counter: StepCounter) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    before = counter.steps
    response = httpx.post(f"{url}/v1/chat/completions", json=NEXT, headers=headers, timeout=600)
    assert response.status_code == 200, response.text
    return counter.steps - before


@pytest.mark.parametrize("how", list(OPEN_CLIENT))
def test_clients_that_leave_cost_the_next_request_at_most_one_step(served, how, caplog):
    url, key, engine, counter = served
    alone = _next_request_steps(url, key, counter)
    assert alone == NEXT["max_tokens"]  # the base model never stops early on this prompt
    started = counter.steps
    clients = [OPEN_CLIENT[how](url, key, 3)] + [OPEN_CLIENT[how](url, key, 0) for _ in range(3)]
    deadline = time.monotonic() + 30
    while (_generating(engine) < 4 or counter.steps < started + 3) and time.monotonic() < deadline:
        time.sleep(0.01)  # one generates (3 tokens at least), three wait for the model
    assert _generating(engine) == 4
    with caplog.at_level(logging.INFO, logger="fedit.serving"):
        for client in [*clients[1:], clients[0]]:  # the queued ones first, as a crowd leaves
            if isinstance(client, socket.socket):
                client.close()
            else:
                client.send_signal(signal.SIGKILL)
                client.wait()
        waited = _next_request_steps(url, key, counter) - alone
        assert waited <= 1, f"the next request waited {waited} steps of abandoned requests"
        while _generating(engine) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert _generating(engine) == 0 and not engine.lock.locked()
    left = [r.getMessage() for r in caplog.records if "client left" in r.getMessage()]
    assert len(left) == 4, left  # every departure is logged
    # The active request stops after the step in progress. A queued request whose departure the
    # server has seen never starts; one whose socket close is still in flight when the model
    # frees up (on a loaded machine) may take one step before it sees it, never more.
    stopped = [int(m.split("stopped after ")[1].split()[0]) for m in left if "stopped after" in m]
    assert sum("while queued" in message for message in left) >= 2, left
    assert sorted(stopped)[:-1] == [1] * (len(stopped) - 1), left
