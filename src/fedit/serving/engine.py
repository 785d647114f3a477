"""Generate chat completions on the shared model, one request at a time, token by token.

All requests share one model whose active adapter is global state, so each generation runs in a
worker thread that holds ``CompletionEngine.lock`` from adapter switch to last token; other
requests wait for it (a queue of one). The worker hands token ids to the caller through a queue,
and the caller turns them into text deltas. Exactly one ``Delta`` is yielded per generated token
(EOS excluded), so a stream has as many content chunks as ``usage.completion_tokens``.

A client that leaves is told to the engine by setting ``PreparedRequest.client_gone`` (the HTTP
layer does, the moment it sees the disconnect): generation stops after the step in progress, and
a request still waiting for the model gives up its place without being started.

Example:
    engine = CompletionEngine(ServedModels(parse_adapter_specs(["runs/quickstart/global_adapter"])))
    prepared = engine.prepare(parse_chat_request(body, max_tokens_limit=512))
    text = "".join(delta.text for delta in engine.stream(prepared))
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from fedit.serving.models import ServedModels
from fedit.serving.prompts import adds_special_tokens, chat_prompt
from fedit.serving.protocol import APIError, ChatRequest

logger = logging.getLogger(__name__)

_END = object()  # end of the token queue
_QUEUE_POLL_S = 0.05  # how often a waiting request checks whether its client is still there


@dataclass
class PreparedRequest:
    """A validated request with its prompt tokenized and its token budget fixed."""

    request: ChatRequest
    input_ids: list[int]
    max_new_tokens: int
    client_gone: threading.Event = field(default_factory=threading.Event, compare=False)
    """Set when the client disconnects: stop generating, or never start."""

    @property
    def prompt_tokens(self) -> int:
        return len(self.input_ids)


@dataclass
class Delta:
    """The text one generated token adds; ``finish_reason`` is set on the last one.

    ``is_token`` is False only for the single empty delta of an answer with no token at all.
    """

    text: str
    finish_reason: str | None = None
    is_token: bool = True


@dataclass
class Completion:
    """A whole (non-streamed) answer."""

    text: str
    finish_reason: str
    completion_tokens: int
    deltas: list[Delta] = field(default_factory=list)


class _TokenQueue(BaseStreamer):
    """Receives generated token ids from ``generate`` (the first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()
        self.generated = 0
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():  # (1,) per step for one sequence
            self.generated += 1
            self.queue.put(token)

    def end(self) -> None:
        self.queue.put(_END)


class _StopWhen(StoppingCriteria):
    """Stops generation once one of ``events`` is set (stop string seen, client gone)."""

    def __init__(self, *events: threading.Event) -> None:
        self.events = events

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> Any:
        stop = any(event.is_set() for event in self.events)
        return torch.full((input_ids.shape[0],), stop, device=input_ids.device)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = {tokenizer.eos_token_id}
    declared = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos.update(declared if isinstance(declared, list) else [declared])
    eos.discard(None)
    return eos


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters to keep back: an incomplete UTF-8 character (decoded as
    U+FFFD until its last byte arrives), and before it the start of a stop sequence that the
    next tokens may complete."""
    partial = len(text) - len(text.rstrip("\ufffd"))
    body = text[: len(text) - partial]
    longest = max((len(stop) for stop in stops), default=1) - 1
    for length in range(min(longest, len(body)), 0, -1):
        if any(stop.startswith(body[-length:]) for stop in stops):
            return partial + length
    return partial


class CompletionEngine:
    """Serializes generation on the shared model and streams each answer as text deltas.

    Args:
        models: The loaded base model and adapters.
    """

    def __init__(self, models: ServedModels) -> None:
        self.models = models
        self.tokenizer: Any = models.tokenizer
        self.lock = threading.Lock()  # held for a whole generation, adapter switch included
        self._tokenizer_lock = threading.Lock()  # fast tokenizers dislike concurrent calls
        self.eos_ids = _eos_ids(models.model, self.tokenizer)

    def prepare(self, request: ChatRequest) -> PreparedRequest:
        """Check the model id, build and tokenize the prompt, and fix the token budget.

        Raises:
            APIError: Unknown model (404) or a prompt that does not fit the context window (400).
        """
        served = self.models.get(request.model)
        if served is None:
            known = ", ".join(self.models.models)
            raise APIError(
                404,
                f"The model {request.model!r} does not exist; this server has: {known}",
                param="model",
                code="model_not_found",
            )
        prompt = self._prompt(request, served.template)
        with self._tokenizer_lock:
            encoded = self.tokenizer(
                prompt, add_special_tokens=adds_special_tokens(served.template)
            )
        input_ids = list(encoded["input_ids"])
        return PreparedRequest(request, input_ids, self._budget(request, len(input_ids)))

    def _prompt(self, request: ChatRequest, template: str) -> str:
        from jinja2 import TemplateError

        try:
            return chat_prompt(request.messages, template, self.tokenizer)
        except TemplateError as err:  # e.g. a template that allows no system message
            raise APIError(
                400, f"the model's chat template rejected the messages: {err}", "messages"
            ) from None

    def _budget(self, request: ChatRequest, prompt_tokens: int) -> int:
        window = self.models.context_window
        if window is None:
            return request.max_tokens or 256
        room = window - prompt_tokens
        if room < 1 or (request.max_tokens is not None and request.max_tokens > room):
            wanted = request.max_tokens or 1
            raise APIError(
                400,
                f"This model's context window is {window} tokens; the messages take "
                f"{prompt_tokens} and {wanted} were asked for the completion. Shorten the "
                "messages or lower max_tokens.",
                param="messages",
                code="context_length_exceeded",
            )
        return min(request.max_tokens or room, room)

    def complete(self, prepared: PreparedRequest) -> Completion:
        """Generate the whole answer (the non-streamed response)."""
        deltas = list(self.stream(prepared))
        text = "".join(delta.text for delta in deltas)
        tokens = sum(delta.is_token for delta in deltas)
        return Completion(text, deltas[-1].finish_reason or "stop", tokens, deltas)

    def stream(self, prepared: PreparedRequest) -> Iterator[Delta]:
        """Yield one ``Delta`` per generated token; the last carries ``finish_reason``.

        With no token generated at all (EOS first), a single empty delta with
        ``is_token=False`` is yielded. Closing the iterator early, or setting
        ``prepared.client_gone``, stops generation and frees the model.
        """
        cancel = threading.Event()
        tokens = _TokenQueue()
        worker = threading.Thread(
            target=self._generate,
            args=(prepared, tokens, cancel),
            name="fedit-generate",
            daemon=True,
        )
        worker.start()
        try:
            yield from self._deltas(prepared, tokens.queue, cancel)
        finally:
            cancel.set()  # an early close returns at once; the worker stops after its step
        worker.join()

    def _deltas(
        self, prepared: PreparedRequest, tokens: queue.Queue[Any], cancel: threading.Event
    ) -> Iterator[Delta]:
        stops = prepared.request.stop
        ids: list[int] = []
        emitted, final_text, finish = "", "", "length"
        pending: Delta | None = None
        while (token := tokens.get()) is not _END:
            if isinstance(token, BaseException):
                raise token
            if token in self.eos_ids or cancel.is_set():
                finish = "stop"
                continue
            ids.append(token)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            cut = min((text.find(s) for s in stops if s in text), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                cancel.set()  # the worker stops after this step
            shown = text if cut >= 0 else text[: len(text) - _held_back(text, stops)]
            delta = shown[len(emitted) :] if shown.startswith(emitted) else ""
            emitted += delta
            if pending is not None:
                yield pending
            pending, final_text = Delta(delta), text
        if pending is None:
            yield Delta("", finish, is_token=False)
            return
        # The last token also carries whatever was held back (a stop-sequence prefix that never
        # completed, for instance).
        if final_text.startswith(emitted):
            pending.text += final_text[len(emitted) :]
        pending.finish_reason = finish
        yield pending

    def _generate(
        self, prepared: PreparedRequest, tokens: _TokenQueue, cancel: threading.Event
    ) -> None:
        request = prepared.request
        sample = request.temperature > 0
        config = GenerationConfig(
            max_new_tokens=prepared.max_new_tokens,
            do_sample=sample,
            temperature=request.temperature if sample else None,
            top_p=request.top_p if sample else None,
            top_k=0 if sample else None,  # OpenAI has no top-k: only top_p truncates
            num_beams=1,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.tokenizer.pad_token_id,
        )
        try:
            if not self._wait_for_model(cancel, prepared.client_gone):
                if prepared.client_gone.is_set():
                    logger.info(
                        "client left while queued: request for %r not started", request.model
                    )
                return
            try:
                self._run(prepared, config, tokens, cancel)
            finally:
                self.lock.release()
            if prepared.client_gone.is_set():
                logger.info(
                    "client left: generation for %r stopped after %d tokens",
                    request.model,
                    tokens.generated,
                )
        except Exception as err:  # handed to the caller, who reports it
            logger.exception("generation failed")
            tokens.queue.put(err)
        finally:
            tokens.end()

    def _wait_for_model(self, *events: threading.Event) -> bool:
        """Take ``self.lock``; give up (False, lock not held) as soon as one of ``events`` is set,
        so that a request whose client has left never starts."""
        while not self.lock.acquire(timeout=_QUEUE_POLL_S):
            if any(event.is_set() for event in events):
                return False
        if any(event.is_set() for event in events):
            self.lock.release()
            return False
        return True

    def _run(
        self,
        prepared: PreparedRequest,
        config: GenerationConfig,
        tokens: _TokenQueue,
        cancel: threading.Event,
    ) -> None:
        """Generate with the lock held, streaming token ids into ``tokens``."""
        request = prepared.request
        with self.models.activate(request.model) as model, torch.no_grad():
            if request.seed is not None:
                torch.manual_seed(request.seed)
            device = next(model.parameters()).device
            input_ids = torch.tensor([prepared.input_ids], device=device)  # (1, T)
            model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
                streamer=tokens,
                stopping_criteria=StoppingCriteriaList([_StopWhen(cancel, prepared.client_gone)]),
            )
