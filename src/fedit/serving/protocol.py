"""The OpenAI chat-completions wire format: request validation, response and error bodies.

Everything here is plain Python (no web framework), so the rules can be tested without a server.
Fields that OpenAI defines but fedit does not implement (``frequency_penalty``, ``logit_bias``,
``user``, ...) are accepted and ignored, as most OpenAI-compatible servers do; ``n`` must be 1.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "developer", "user", "assistant")
MAX_STOP_SEQUENCES = 4
MAX_REQUEST_BYTES = 1 << 20  # 1 MiB by default: a long conversation is tens of kilobytes


class APIError(Exception):
    """A request that gets an OpenAI-style error response instead of a completion."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}`` as OpenAI sends it."""
        return error_body(self.message, self.error_type, self.param, self.code)


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The JSON body of an OpenAI error response."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


@dataclass
class ChatRequest:
    """A validated ``POST /v1/chat/completions`` body."""

    model: str
    messages: list[dict[str, str]]
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False


def _bad(message: str, param: str, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def check_unicode(body: Any) -> None:
    """Every string in the body must be text that UTF-8 can hold.

    JSON's ``"\\ud800"`` escape decodes to a lone UTF-16 surrogate, which no tokenizer accepts
    and no UTF-8 writer can write back. Walked without recursion: a deeply nested body is no
    reason to fail.

    Raises:
        APIError: 400 naming the field (``messages[0].content``).
    """
    pending: list[tuple[str, Any]] = [("", body)]
    while pending:
        param, value = pending.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as err:
                name = param or "body"
                raise _bad(
                    f"{name} is not valid Unicode: a lone surrogate "
                    f"{value[err.start]!r} at character {err.start}",
                    name,
                ) from None
        elif isinstance(value, dict):
            for key, item in value.items():
                pending += [(param or "body", key), (f"{param}.{key}" if param else key, item)]
        elif isinstance(value, list):
            pending += [(f"{param}[{index}]", item) for index, item in enumerate(value)]


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"'{key}' must be a number, got {value!r}", key)
    if not low <= value <= high:
        raise _bad(f"'{key}' must be between {low:g} and {high:g}, got {value!r}", key)
    return float(value)


def _integer(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{key}' must be an integer, got {value!r}", key)
    return value


def _content(value: Any, param: str) -> str:
    """Message content: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for index, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise _bad(f"{param}[{index}]: only text content parts are supported", param)
            if not isinstance(part.get("text"), str):
                raise _bad(f"{param}[{index}].text must be a string", param)
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(f"{param} must be a string or a list of text parts", param)


def parse_messages(value: Any) -> list[dict[str, str]]:
    """Validate ``messages``: a non-empty list of {role, content} ending with a user turn.

    ``developer`` (OpenAI's newer name for the system role) is read as ``system``.
    """
    if not isinstance(value, list) or not value:
        raise _bad("'messages' must be a non-empty list of messages", "messages")
    messages = []
    for index, message in enumerate(value):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _bad(f"{param} must be an object with 'role' and 'content'", param)
        role = message.get("role")
        if role not in ROLES:
            raise _bad(
                f"{param}.role: {role!r} is not supported; use one of {', '.join(ROLES)}",
                f"{param}.role",
            )
        content = _content(message.get("content"), f"{param}.content")
        messages.append({"role": "system" if role == "developer" else role, "content": content})
    if messages[-1]["role"] != "user":
        raise _bad("the last message must have role 'user'", f"messages[{len(messages) - 1}].role")
    return messages


def _stop(value: Any) -> list[str]:
    stops = [value] if isinstance(value, str) else value
    if stops is None:
        return []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _bad("'stop' must be a non-empty string or a list of non-empty strings", "stop")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise _bad(f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences", "stop")
    return stops


def _max_tokens(body: dict[str, Any], limit: int) -> int | None:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = _integer(body, key)
    if value is not None and value < 1:
        raise _bad(f"'{key}' must be at least 1, got {value}", key)
    if value is not None and value > limit:
        raise _bad(
            f"'{key}' is {value}, above this server's limit of {limit} (--max-tokens-limit)",
            key,
        )
    return value


def parse_chat_request(body: Any, max_tokens_limit: int) -> ChatRequest:
    """Validate a decoded JSON body. Raises ``APIError`` (400) naming the offending field."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", "body")
    check_unicode(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required: one of the ids that GET /v1/models lists", "model")
    n = _integer(body, "n")
    if n not in (None, 1):
        raise _bad(f"'n' must be 1 (one choice per request), got {n}", "n")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise _bad(f"'stream' must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    return ChatRequest(
        model=model,
        messages=parse_messages(body.get("messages")),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        max_tokens=_max_tokens(body, max_tokens_limit),
        stop=_stop(body.get("stop")),
        seed=_integer(body, "seed"),
        stream=stream,
        include_usage=bool(options.get("include_usage")),
    )


def new_completion_id() -> str:
    """An id in OpenAI's style (``chatcmpl-...``)."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    completion_id: str,
    model: str,
    content: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """A non-streamed ``chat.completion`` object."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage_body(prompt_tokens, completion_tokens),
    }


def chunk_body(
    completion_id: str,
    model: str,
    delta: dict[str, str],
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; with ``usage`` it is the final usage-only chunk."""
    choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage:
        chunk["usage"] = usage
    return chunk
