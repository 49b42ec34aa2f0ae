"""One submitted request: the handle its caller holds, and the state the decode loop keeps for it.

The handle is the only thing shared between threads: the loop puts events on it and settles it once (a
Completion or a GenerationError); whoever waits on it wakes at once either way, so no failure can leave a caller
blocked. It has two sides for its readers: a blocking one (`events`, `result`) for threads, and an asyncio one
(`aevents`, `aresult`) that the API awaits on its event loop, so a streamed or awaited request holds no worker
thread: the decode thread hands each event to the loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from smoltune.serve.stops import StopText
from smoltune.serve.types import Completion, GenerationError, GenerationParams, TokenEvent, TokenLogprob

_END = object()  # the last item a handle hands its readers


class RequestHandle:
    """What `Engine.submit` returns: stream its events, or wait for its result (blocking or awaited), or cancel it.

    Events wait in a queue until a reader takes them, so a reader that arrives late (an async one subscribes on its
    first `anext`, after submission) still gets every token. One reader takes the events; a second one, or one that
    comes after the end, ends at once.
    """

    def __init__(self) -> None:
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()  # the backlog, and the blocking readers' queue
        self._settled = threading.Event()
        self._cancelled = threading.Event()
        self._lock = threading.Lock()  # orders events, the end and (un)subscribing
        self._streams: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]] = []
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._completion: Completion | None = None
        self._error: str | None = None

    def events(self) -> Iterator[TokenEvent]:
        """TokenEvents as they are decoded; ends when the request does; raises GenerationError if it failed."""
        while (item := self._events.get()) is not _END:
            yield item
        self._events.put(_END)  # a second reader (or result() after events()) ends at once too
        self._raise_if_failed()

    def result(self, timeout: float | None = None) -> Completion:
        if not self._settled.wait(timeout):
            raise TimeoutError(f"the request did not finish within {timeout} s")
        return self._outcome()

    async def aevents(self) -> AsyncIterator[TokenEvent]:
        """`events` for a coroutine: awaits each event on the running loop, no thread held while it waits."""
        inbox = self._subscribe(asyncio.get_running_loop())
        try:
            while (item := await inbox.get()) is not _END:
                yield item
        finally:
            self._unsubscribe(inbox)
        self._raise_if_failed()

    async def aresult(self, timeout: float | None = None) -> Completion:
        """`result` for a coroutine: TimeoutError after `timeout` s, GenerationError if the request failed."""
        if not self._settled.is_set():
            loop = asyncio.get_running_loop()
            woken: asyncio.Future[None] = loop.create_future()
            with self._lock:
                waiting = not self._settled.is_set()
                if waiting:
                    self._waiters.append((loop, woken))
            if waiting:
                try:
                    await asyncio.wait_for(woken, timeout)
                except TimeoutError:
                    raise TimeoutError(f"the request did not finish within {timeout} s") from None
                finally:
                    with self._lock:
                        self._waiters = [w for w in self._waiters if w[1] is not woken]
        return self._outcome()

    def cancel(self) -> None:
        """The client went away: the row leaves the batch at the next token boundary."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self._settled.is_set()

    def _outcome(self) -> Completion:
        self._raise_if_failed()
        assert self._completion is not None
        return self._completion

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise GenerationError(self._error)

    def _subscribe(self, loop: asyncio.AbstractEventLoop) -> asyncio.Queue[Any]:
        """An asyncio queue on `loop` that first gets the backlog, then every event as the decode thread emits it."""
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        with self._lock:  # no event can slip between the backlog and the subscription
            while True:
                try:
                    item = self._events.get_nowait()
                except queue.Empty:
                    break
                if item is not _END:
                    inbox.put_nowait(item)
            if self._settled.is_set():
                inbox.put_nowait(_END)
                self._events.put(_END)  # the end stays for any blocking reader
            else:
                self._streams.append((loop, inbox))
        return inbox

    def _unsubscribe(self, inbox: asyncio.Queue[Any]) -> None:
        with self._lock:
            self._streams = [s for s in self._streams if s[1] is not inbox]

    # -- the decode loop's side --------------------------------------------------------------------------

    def emit(self, event: TokenEvent) -> None:
        with self._lock:
            self._hand_over(event)

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
            self._hand_over(_END)
            for loop, woken in self._waiters:
                _call_in(loop, _wake, woken)
        return True

    def _hand_over(self, item: Any) -> None:
        """(Under the lock.) To the async readers if any, else to the backlog; the end always to the backlog too,
        so a blocking reader never waits on a request that has ended."""
        for loop, inbox in self._streams:
            _call_in(loop, inbox.put_nowait, item)
        if not self._streams or item is _END:
            self._events.put(item)


def _call_in(loop: asyncio.AbstractEventLoop, fn: Any, arg: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, arg)
    except RuntimeError:  # the loop has closed (the server stopped): nobody is left to read it
        pass


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():  # a waiter that timed out cancelled its future
        woken.set_result(None)


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
