"""Helpers for the judge tests (no tests here): a scripted OpenAI-compatible judge, a request
counter around any ASGI app, and the serving tests' tiny runs (imported from tests/serving)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fedit.config import JudgeConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from serving_support import MAX_TOKENS_LIMIT, load_engine, make_runs  # noqa: E402

__all__ = [
    "MAX_TOKENS_LIMIT",
    "CountingApp",
    "FailFirst",
    "FakeJudge",
    "judge_config",
    "load_engine",
    "make_runs",
]

Reply = Callable[[list[dict[str, str]]], str]


def judge_config(base_url: str | None, cache: Path, **overrides: Any) -> JudgeConfig:
    """A JudgeConfig for tests: model ``judge``, a private cache folder, no env key."""
    settings: dict[str, Any] = {
        "base_url": base_url,
        "model": "judge",
        "api_key_env": "FEDIT_TEST_JUDGE_KEY",
        "cache": str(cache),
        "max_retries": 3,
        "timeout": 30.0,
        "max_tokens": 64,
    }
    settings.update(overrides)
    return JudgeConfig(**settings)


class CountingApp:
    """ASGI middleware that counts the chat-completion requests reaching ``app``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.chat_requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
            self.chat_requests += 1
        await self.app(scope, receive, send)


class FailFirst:
    """ASGI middleware: the first ``count`` chat requests get ``status``, then ``app`` answers."""

    def __init__(self, app: Any, count: int, status: int = 503) -> None:
        self.app = app
        self.count = count
        self.status = status
        self.failed = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        chat = scope["type"] == "http" and scope["path"].endswith("/chat/completions")
        if chat and self.failed < self.count:
            self.failed += 1
            body = {"error": {"message": "overloaded, try again"}}
            await JSONResponse(body, status_code=self.status)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class FakeJudge:
    """An OpenAI-compatible judge whose replies come from ``reply(messages)``.

    The first ``fail_first`` chat requests are answered with ``fail_status`` (with
    ``Retry-After: 0`` for 429). ``chat_requests`` counts every chat request; ``bodies`` keeps
    the ones that were answered.
    """

    def __init__(
        self,
        reply: Reply,
        models: tuple[str, ...] = ("judge",),
        fail_first: int = 0,
        fail_status: int = 503,
        api_key: str | None = None,
    ) -> None:
        self.reply = reply
        self.models = models
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.api_key = api_key
        self.chat_requests = 0
        self.bodies: list[dict[str, Any]] = []
        self.app = self._build()

    def _denied(self, request: Request) -> JSONResponse | None:
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            error = {"message": "Incorrect API key provided", "code": "invalid_api_key"}
            return JSONResponse({"error": error}, status_code=401)
        return None

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models(request: Request) -> Any:
            data = [{"id": name, "object": "model", "owned_by": "test"} for name in self.models]
            return self._denied(request) or {"object": "list", "data": data}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            self.chat_requests += 1
            body = await request.json()
            if denied := self._denied(request):
                return denied
            if body["model"] not in self.models:
                error = {"message": f"The model {body['model']!r} does not exist"}
                return JSONResponse({"error": error}, status_code=404)
            if self.chat_requests <= self.fail_first:
                headers = {"Retry-After": "0"} if self.fail_status == 429 else {}
                error = {"message": "try again later"}
                return JSONResponse({"error": error}, self.fail_status, headers=headers)
            self.bodies.append(body)
            message = {"role": "assistant", "content": self.reply(body["messages"])}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return {"id": "x", "object": "chat.completion", "model": body["model"],
                    "choices": [choice]}  # fmt: skip

        return app
