"""The HTTP API (FastAPI): OpenAI-compatible chat completions, the model list, health, chat page.

Routes:
    GET  /                      the chat page (static HTML/JS shipped in ``serving/static``)
    GET  /health                liveness, no key needed
    GET  /v1/models             base, global and named adapters
    GET  /v1/models/{id}        one of them
    POST /v1/chat/completions   OpenAI's chat completions, streamed as server-sent events or not

Every error is an OpenAI-style JSON body (``protocol.error_body``). With an API key, ``/v1/*``
needs ``Authorization: Bearer KEY``; the page and ``/health`` do not. A body larger than
``max_request_bytes`` is refused with 413 before it is read to the end.

A client that disconnects sets its request's ``client_gone`` flag at once (``GenerationStream``
for streams, ``_complete`` otherwise), which stops generation after the step in progress or keeps
a queued request from starting. Waiting for the stream's iterator to notice is not enough: it is
blocked in a worker thread until the next token (a queued request's first token comes only once
it has started), and a stream cancelled while it waits to send is closed only when the garbage
collector finds it.

Example:
    app = create_app(CompletionEngine(ServedModels(specs)), api_key=None, max_tokens_limit=512)
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Generator
from importlib import resources
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from fedit.serving.engine import Completion, CompletionEngine, PreparedRequest
from fedit.serving.models import ServedModel
from fedit.serving.protocol import (
    MAX_REQUEST_BYTES,
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
    """Iterate a blocking generator off the event loop, and close it when the stream ends
    (Starlette's own wrapper does not). Closing joins the generation thread, so it runs in a
    thread too, shielded from the cancellation that a disconnect brings."""
    try:
        while (item := await run_in_threadpool(next, events, None)) is not None:
            yield item
    finally:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(events.close)


class GenerationStream(StreamingResponse):
    """A streamed completion that sets ``client_gone`` the moment its client disconnects.

    It listens for the disconnect itself, whatever ASGI version the server speaks, while the
    events are sent; Starlette then cancels the sending, which waits for the next event.
    """

    def __init__(self, content: AsyncIterator[str], client_gone: threading.Event) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.client_gone = client_gone

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:

            async def stream() -> None:
                try:
                    await self.stream_response(send)
                except OSError:  # ASGI 2.4 servers report a lost client from send
                    self.client_gone.set()
                group.cancel_scope.cancel()

            group.start_soon(stream)
            await self.listen_for_disconnect(receive)
            self.client_gone.set()
            group.cancel_scope.cancel()


async def _complete(
    engine: CompletionEngine, prepared: PreparedRequest, request: Request
) -> Completion:
    """The whole answer, with ``client_gone`` set if the client disconnects meanwhile."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        prepared.client_gone.set()

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        done = await run_in_threadpool(engine.complete, prepared)
        group.cancel_scope.cancel()
    return done


async def _json_body(request: Request, max_bytes: int) -> Any:
    declared = request.headers.get("content-length", "")
    too_large = APIError(
        413,
        f"the request body is larger than this server's limit of {max_bytes} bytes "
        "(fedit serve --max-request-bytes)",
        "body",
        "request_too_large",
    )
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise too_large
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON: {err}", "body") from None


def _authorized(headers: Headers, api_key: str) -> bool:
    scheme, _, token = headers.get("authorization", "").partition(" ")
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


class RequireKey:
    """ASGI middleware: ``/v1/*`` needs ``Authorization: Bearer <api_key>``.

    Plain ASGI on purpose: Starlette's ``@app.middleware("http")`` relays a streamed body through
    a queue, so a client's disconnect cancels the relay instead of reaching the stream, and the
    abandoned generation ran on until the garbage collector closed it.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"].startswith("/v1")
            and not _authorized(Headers(scope=scope), self.api_key)
        ):
            body = error_body(
                "Missing or incorrect API key: send 'Authorization: Bearer KEY' with the key "
                "given to fedit serve (--api-key or FEDIT_API_KEY).",
                "invalid_request_error",
                code="invalid_api_key",
            )
            response = JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _add_page(app: FastAPI) -> None:
    headers = {"Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff"}

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_static("index.html"), headers=headers)

    @app.get("/chat.js", include_in_schema=False)
    async def script() -> Response:
        return Response(_static("chat.js"), media_type="text/javascript", headers=headers)


def create_app(
    engine: CompletionEngine,
    api_key: str | None = None,
    max_tokens_limit: int = 512,
    max_request_bytes: int = MAX_REQUEST_BYTES,
) -> FastAPI:
    """The FastAPI application serving ``engine``'s models.

    Args:
        engine: The loaded models and the generation lock.
        api_key: When set, ``/v1/*`` requests need ``Authorization: Bearer <api_key>``.
        max_tokens_limit: Largest ``max_tokens`` a request may ask for (400 above it).
        max_request_bytes: Largest request body accepted (413 above it).
    """
    app = FastAPI(title="fedit", docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app)
    if api_key:
        app.add_middleware(RequireKey, api_key=api_key)
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
        chat = parse_chat_request(await _json_body(request, max_request_bytes), max_tokens_limit)
        prepared = await run_in_threadpool(engine.prepare, chat)
        if chat.stream:
            events = _in_threads(sse_events(engine, prepared))
            return GenerationStream(events, prepared.client_gone)
        done = await _complete(engine, prepared, request)
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
