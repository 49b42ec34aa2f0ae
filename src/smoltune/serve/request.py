"""One submitted request: the handle its caller holds, and the state the decode loop keeps for it.

The handle is the only thing shared between threads: the loop puts events on its queue and settles it once
(a Completion or a GenerationError); whoever waits on it wakes at once either way, so no failure can leave a
caller blocked.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from smoltune.serve.stops import StopText
from smoltune.serve.types import Completion, GenerationError, GenerationParams, TokenEvent, TokenLogprob

_END = object()  # the last item on a handle's queue


class RequestHandle:
    """What `Engine.submit` returns: stream its events, or wait for its result, or cancel it."""

    def __init__(self) -> None:
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._settled = threading.Event()
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._completion: Completion | None = None
        self._error: str | None = None

    def events(self) -> Iterator[TokenEvent]:
        """TokenEvents as they are decoded; ends when the request does; raises GenerationError if it failed."""
        while (item := self._events.get()) is not _END:
            yield item
        self._events.put(_END)  # a second reader (or result() after events()) ends at once too
        if self._error is not None:
            raise GenerationError(self._error)

    def result(self, timeout: float | None = None) -> Completion:
        if not self._settled.wait(timeout):
            raise TimeoutError(f"the request did not finish within {timeout} s")
        if self._error is not None:
            raise GenerationError(self._error)
        assert self._completion is not None
        return self._completion

    def cancel(self) -> None:
        """The client went away: the row leaves the batch at the next token boundary."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self._settled.is_set()

    # -- the decode loop's side --------------------------------------------------------------------------

    def emit(self, event: TokenEvent) -> None:
        self._events.put(event)

    def finish(self, completion: Completion) -> bool:
        return self._settle(completion, None)

    def fail(self, message: str) -> bool:
        return self._settle(None, message)

    def _settle(self, completion: Completion | None, error: str | None) -> bool:
        with self._lock:  # the first outcome wins: a request is finished or failed once
            if self._settled.is_set():
                return False
            self._completion, self._error = completion, error
            self._settled.set()
        self._events.put(_END)
        return True


@dataclass(eq=False)
class Request:
    """The loop's record of one request (touched by the loop thread only, apart from `handle`)."""

    handle: RequestHandle
    prompt_ids: list[int]
    adapter: str | None
    params: GenerationParams
    text: StopText
    submitted: float = field(default_factory=time.monotonic)
    tokens: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: tuple[TokenLogprob, ...] = ()
    last_token: int = -1
    last_token_at: float | None = None
    generator: Any = None

    @property
    def reserved(self) -> int:
        """KV-cache tokens this request may come to hold."""
        return len(self.prompt_ids) + self.params.max_new_tokens

    def expired(self, now: float) -> bool:
        return self.params.deadline_s is not None and now - self.submitted > self.params.deadline_s

    def completion(self, finish_reason: str) -> Completion:
        return Completion(
            text=self.text.text,
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=len(self.tokens),
            finish_reason=finish_reason,
            tokens=tuple(self.tokens),
            prompt_logprobs=self.prompt_logprobs,
        )
