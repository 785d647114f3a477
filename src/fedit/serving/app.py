"""The HTTP API (FastAPI): OpenAI-compatible chat completions, the model list, health, chat page.

Routes:
    GET  /                      the chat page (static HTML/JS shipped in ``serving/static``)
    GET  /health                liveness, no key needed
    GET  /v1/models             base, global and named adapters
    GET  /v1/models/{id}        one of them
    POST /v1/chat/completions   OpenAI's chat completions, streamed as server-sent events or not

Every error is an OpenAI-style JSON body (``protocol.error_body``). With an API key, ``/v1/*``
needs ``Authorization: Bearer KEY``; the page and ``/health`` do not.

Example:
    app = create_app(CompletionEngine(ServedModels(specs)), api_key=None, max_tokens_limit=512)
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedit.serving.engine import CompletionEngine, PreparedRequest
from fedit.serving.models import ServedModel
from fedit.serving.protocol import (
    APIError,
    chunk_body,
    completion_body,
    error_body,
    new_completion_id,
    parse_chat_request,
    usage_body,
)

logger = logging.getLogger(__name__)

# The page loads only its own script; inline scripts never run, whatever text ends up in it.
PAGE_POLICY = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'"
STARTED = int(time.time())


def _static(name: str) -> str:
    return (resources.files("fedit.serving") / "static" / name).read_text(encoding="utf-8")


def _model_object(served: ServedModel, base_name: str) -> dict[str, Any]:
    return {
        "id": served.id,
        "object": "model",
        "created": STARTED,
        "owned_by": "fedit",
        "root": str(served.adapter) if served.adapter else base_name,
        "parent": None if served.adapter is None else "base",
        "template": served.template,
    }


def _event(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


def sse_events(engine: CompletionEngine, prepared: PreparedRequest) -> Generator[str, None, None]:
    """The server-sent events of one streamed completion, ending with ``data: [DONE]``.

    One content chunk per generated token, then a chunk with an empty delta and the finish
    reason, then (with ``stream_options.include_usage``) a usage-only chunk.
    """
    completion_id, model = new_completion_id(), prepared.request.model
    tokens, role_sent = 0, False
    try:
        for delta in engine.stream(prepared):
            if delta.is_token:
                tokens += 1
                content = {"content": delta.text}
                yield _event(chunk_body(completion_id, model, _with_role(content, role_sent)))
                role_sent = True
            if delta.finish_reason:
                finish = _with_role({}, role_sent)
                yield _event(chunk_body(completion_id, model, finish, delta.finish_reason))
    except Exception as err:  # headers are sent: report in-band, as OpenAI does
        logger.exception("streamed generation failed")
        yield _event(error_body(f"generation failed: {err}", "server_error"))
    if prepared.request.include_usage:
        usage = usage_body(prepared.prompt_tokens, tokens)
        yield _event(chunk_body(completion_id, model, {}, usage=usage))
    yield _event("[DONE]")


def _with_role(delta: dict[str, str], role_sent: bool) -> dict[str, str]:
    return delta if role_sent else {"role": "assistant", **delta}


async def _in_threads(events: Generator[str, None, None]) -> AsyncIterator[str]:
    """Iterate a blocking generator off the event loop, and close it when the client leaves
    (Starlette's own wrapper does not), which stops generation and frees the model."""
    try:
        while (item := await run_in_threadpool(next, events, None)) is not None:
            yield item
    finally:
        events.close()


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON: {err}", "body") from None


def _authorized(request: Request, api_key: str) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), api_key.encode()
    )


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        body = error_body(str(err.detail), "invalid_request_error")
        return JSONResponse(body, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, err: Exception) -> JSONResponse:
        logger.exception("request failed")
        return JSONResponse(error_body(f"internal error: {err}", "server_error"), status_code=500)


def _add_auth(app: FastAPI, api_key: str | None) -> None:
    if not api_key:
        return

    @app.middleware("http")
    async def require_key(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path.startswith("/v1") and not _authorized(request, api_key):
            body = error_body(
                "Missing or incorrect API key: send 'Authorization: Bearer KEY' with the key "
                "given to fedit serve (--api-key or FEDIT_API_KEY).",
                "invalid_request_error",
                code="invalid_api_key",
            )
            return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)


def _add_page(app: FastAPI) -> None:
    headers = {"Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff"}

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_static("index.html"), headers=headers)

    @app.get("/chat.js", include_in_schema=False)
    async def script() -> Response:
        return Response(_static("chat.js"), media_type="text/javascript", headers=headers)


def create_app(
    engine: CompletionEngine, api_key: str | None = None, max_tokens_limit: int = 512
) -> FastAPI:
    """The FastAPI application serving ``engine``'s models.

    Args:
        engine: The loaded models and the generation lock.
        api_key: When set, ``/v1/*`` requests need ``Authorization: Bearer <api_key>``.
        max_tokens_limit: Largest ``max_tokens`` a request may ask for (400 above it).
    """
    app = FastAPI(title="fedit", docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app)
    _add_auth(app, api_key)
    _add_page(app)
    models = engine.models

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(models.models)}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        data = [_model_object(m, models.base_name) for m in models.models.values()]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        served = models.get(model_id)
        if served is None:
            raise APIError(
                404, f"The model {model_id!r} does not exist", "model", "model_not_found"
            )
        return _model_object(served, models.base_name)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        chat = parse_chat_request(await _json_body(request), max_tokens_limit)
        prepared = await run_in_threadpool(engine.prepare, chat)
        if chat.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            events = _in_threads(sse_events(engine, prepared))
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        done = await run_in_threadpool(engine.complete, prepared)
        body = completion_body(
            new_completion_id(),
            chat.model,
            done.text,
            done.finish_reason,
            prepared.prompt_tokens,
            done.completion_tokens,
        )
        return JSONResponse(body)

    return app
