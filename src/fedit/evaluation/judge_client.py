"""The LLM judge's HTTP client: OpenAI-compatible chat completions, retries and a disk cache.

Any OpenAI-compatible endpoint can judge (GPT-4, vLLM, ``fedit serve``). Requests run
``cfg.concurrency`` at a time; 408/409/429/5xx answers and connection errors are retried with
exponential backoff (0.5 s doubling, capped at 30 s, or the server's ``Retry-After``); a request
that still fails after ``cfg.max_retries`` retries comes back as ``None`` and is counted in
``stats["failures"]``. A wrong key (401/403) or an unknown model (404) stops the whole batch
with a one-line :class:`JudgeError`, since no later request could succeed.

Why httpx and not the ``openai`` client: the ``openai`` client retries inside its own request
loop, so counting retries (for ``stats`` and for tests) and shortening the backoff would mean
reaching into its private ``_base_client`` and ``_constants``. The chat-completions call is one
POST; with httpx (a dependency of ``openai``, so always installed) the retry loop is a dozen
lines that we own and test.

Only successful replies are cached, one JSON file per request under ``cfg.cache`` (default
``$FEDIT_CACHE/judge``), written atomically, so a re-run or a crashed run never pays twice. The
key is the sha256 of (judge model, messages, temperature, max_tokens, repeat index): not the URL
or the key, so the same judge behind another address reuses the cache.

Example:
    client = JudgeClient(cfg.eval.judge)
    client.check()                                   # reachable, key accepted, model served
    replies = client.complete([[{"role": "user", "content": "Rate: ..."}]], repeat_ids=[0])
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import httpx

from fedit.config import ConfigError, JudgeConfig
from fedit.io import atomic_write_json

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]

BASE_DELAY_S = 0.5  # first backoff; doubles per retry
MAX_DELAY_S = 30.0
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is capped rather than obeyed
RETRY_STATUSES = frozenset({408, 409, 429})  # and every 5xx


class JudgeError(ConfigError):
    """A judge endpoint, API key or model problem, in one line naming the URL, key or env var."""


class _RetryableError(Exception):
    """A request worth retrying: 408/409/429/5xx or a connection problem."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _RequestFailed(Exception):
    """A request that retrying will not fix (e.g. 400: the prompt exceeds the judge's context)."""


def cache_key(
    model: str, messages: Messages, temperature: float, max_tokens: int, repeat: int
) -> str:
    """The sha256 that names one judge request in the cache (no URL, no key)."""
    payload = [model, messages, temperature, max_tokens, repeat]
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_cache_dir() -> Path:
    """``$FEDIT_CACHE/judge`` (``~/.cache/fedit/judge``)."""
    from fedit.model.loading import cache_dir  # lazy: loading imports torch

    return cache_dir() / "judge"


class JudgeCache:
    """Successful judge replies, one JSON file per key (``ab/abcdef....json``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        """The cached reply for ``key``, or None (a damaged entry counts as missing)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            reply = json.loads(path.read_text(encoding="utf-8"))["reply"]
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("ignoring a damaged judge cache entry: %s", path)
            return None
        return reply if isinstance(reply, str) else None

    def put(self, key: str, model: str, reply: str) -> None:
        """Store ``reply`` under ``key`` atomically."""
        atomic_write_json(self._path(key), {"model": model, "reply": reply})


def _reason(err: httpx.HTTPError) -> str:
    """A short, one-line reason for a transport error."""
    text = str(err).replace("\n", " ").strip()
    if isinstance(err, httpx.TimeoutException):
        return "timed out"
    if isinstance(err, httpx.ConnectError) and "refused" in text.lower():
        return "connection refused"
    return text or type(err).__name__


def _error_message(response: httpx.Response) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the start of the body."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    return " ".join(str(message).split())


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (the HTTP-date form is ignored)."""
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def backoff_delay(retry: int, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number ``retry`` (0-based): Retry-After, else doubling."""
    if retry_after is not None:
        return min(retry_after, MAX_RETRY_AFTER_S)
    return min(BASE_DELAY_S * 2**retry, MAX_DELAY_S)


class JudgeClient:
    """Chat completions from the judge, concurrent, retried and cached.

    Attributes:
        stats: ``requests_sent`` (HTTP requests, retries included), ``cache_hits``, ``retries``
            and ``failures`` (requests that got no reply after all retries).
    """

    def __init__(self, cfg: JudgeConfig, cache: JudgeCache | None = None) -> None:
        self.cfg = cfg
        self.base_url = cfg.base_url.rstrip("/") if cfg.base_url else None
        self.cache = cache or JudgeCache(Path(cfg.cache) if cfg.cache else default_cache_dir())
        self._api_key = os.environ.get(cfg.api_key_env) or None
        if self._api_key is None:
            logger.info(
                "$%s is not set: no API key is sent (local judges need none)", cfg.api_key_env
            )
        self.stats: dict[str, int] = dict.fromkeys(
            ("requests_sent", "cache_hits", "retries", "failures"), 0
        )
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    def _require_url(self) -> str:
        if self.base_url is None:
            raise JudgeError(
                "eval.judge.base_url: no judge configured; set it to an OpenAI-compatible API "
                "root, e.g. eval.judge.base_url=https://api.openai.com/v1"
            )
        return self.base_url

    def _session(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        return httpx.Client(headers=headers, timeout=self.cfg.timeout)

    def _auth_error(self, url: str, response: httpx.Response) -> JudgeError:
        env = self.cfg.api_key_env
        status = response.status_code
        if self._api_key is None:
            return JudgeError(
                f"eval.judge.api_key_env: {url} needs an API key ({status}); set ${env}"
            )
        return JudgeError(
            f"eval.judge.api_key_env: {url} rejected the API key in ${env} "
            f"({status}: {_error_message(response)})"
        )

    def check(self) -> None:
        """Fail early unless the judge answers, accepts the key and serves ``cfg.model``.

        Raises:
            JudgeError: No base_url, unreachable, key rejected, or the model is not listed.
        """
        url = self._require_url()
        try:
            with self._session() as http:
                response = http.get(f"{url}/models")
        except httpx.HTTPError as err:
            raise JudgeError(f"eval.judge.base_url: cannot reach {url} ({_reason(err)})") from None
        if response.status_code in (401, 403):
            raise self._auth_error(url, response)
        if response.status_code != 200:
            raise JudgeError(
                f"eval.judge.base_url: GET {url}/models answered "
                f"{response.status_code}; expected the API root, e.g. "
                "http://host:port/v1"
            )
        try:
            served = [str(model["id"]) for model in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise JudgeError(
                f"eval.judge.base_url: {url}/models is not an OpenAI model list"
            ) from None
        if self.cfg.model not in served:
            raise JudgeError(
                f"eval.judge.model: {self.cfg.model!r} is not served by {url} "
                f"(it serves: {', '.join(served[:20]) or 'nothing'})"
            )

    def complete(
        self, requests: list[Messages], repeat_ids: list[int] | None = None
    ) -> list[str | None]:
        """The judge's reply to each request, from the cache or the endpoint.

        Args:
            requests: One chat (list of ``{"role", "content"}``) per request.
            repeat_ids: Repeat index of each request (part of the cache key); default all 0.

        Returns:
            One reply per request, in order; None where it failed after all retries.

        Raises:
            JudgeError: No base_url while replies are missing, key rejected, or unknown model.
        """
        repeat_ids = list(repeat_ids) if repeat_ids is not None else [0] * len(requests)
        if len(repeat_ids) != len(requests):
            raise ValueError(f"{len(repeat_ids)} repeat ids for {len(requests)} requests")
        cfg = self.cfg
        keys = [
            cache_key(cfg.model, messages, cfg.temperature, cfg.max_tokens, repeat)
            for messages, repeat in zip(requests, repeat_ids, strict=True)
        ]
        replies: dict[str, str | None] = {}
        missing: dict[str, Messages] = {}
        for key, messages in zip(keys, requests, strict=True):
            if key in replies or key in missing:
                continue
            replies[key] = self.cache.get(key)
            if replies[key] is None:
                missing[key] = messages
        with self._lock:
            self.stats["cache_hits"] += len(requests) - len(missing)
        if missing:
            replies.update(self._fetch_all(missing))
        return [replies[key] for key in keys]

    def _fetch_all(self, missing: dict[str, Messages]) -> dict[str, str | None]:
        url = self._require_url()
        logger.info("asking the judge %s at %s: %d requests", self.cfg.model, url, len(missing))
        results: dict[str, str | None] = {}
        with self._session() as http, ThreadPoolExecutor(self.cfg.concurrency) as pool:
            futures = {
                pool.submit(self._fetch_one, http, url, key, messages): key
                for key, messages in missing.items()
            }
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
            except JudgeError:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return results

    def _fetch_one(self, http: httpx.Client, url: str, key: str, messages: Messages) -> str | None:
        """One request with retries; caches and returns the reply, or None after all retries."""
        reason = ""
        for retry in range(self.cfg.max_retries + 1):
            try:
                reply = self._post(http, url, messages)
            except _RetryableError as err:
                reason = str(err)
                if retry < self.cfg.max_retries:
                    time.sleep(backoff_delay(retry, err.retry_after))
                    self._count("retries")
                continue
            except _RequestFailed as err:
                reason = str(err)
                break
            self.cache.put(key, self.cfg.model, reply)
            return reply
        self._count("failures")
        logger.warning(
            "judge request failed (%s) after %d retries; it counts as a request failure",
            reason,
            self.cfg.max_retries,
        )
        return None

    def _post(self, http: httpx.Client, url: str, messages: Messages) -> str:
        """POST one chat completion; returns the reply text or raises by kind of failure."""
        cfg = self.cfg
        body: dict[str, Any] = {
            "model": cfg.model,
            "messages": messages,
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
        }
        self._count("requests_sent")
        try:
            response = http.post(f"{url}/chat/completions", json=body)
        except httpx.TransportError as err:
            raise _RetryableError(_reason(err)) from None
        status = response.status_code
        if status in (401, 403):
            raise self._auth_error(url, response)
        if status == 404:
            raise JudgeError(
                f"eval.judge.model: {url} does not serve {cfg.model!r} "
                f"(404: {_error_message(response)})"
            )
        if status in RETRY_STATUSES or status >= 500:
            raise _RetryableError(f"HTTP {status}", _retry_after(response))
        if status != 200:
            raise _RequestFailed(f"HTTP {status}: {_error_message(response)}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _RequestFailed("the reply is not a chat completion") from None
        if not isinstance(content, str):
            raise _RequestFailed("the reply has no text content")
        return content
