"""The bridge from the engine's decode thread to the API's event loop (RequestHandle.aevents / aresult): every
event reaches an async reader in order, including those emitted before it subscribed; a failure and a deadline
reach it as GenerationError and TimeoutError; a late push to a closed loop is harmless; and concurrent requests
through the app hold no worker thread of the anyio pool while their tokens decode."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import anyio.to_thread
import httpx
import pytest

from smoltune.serve.api import create_app
from smoltune.serve.request import RequestHandle
from smoltune.serve.types import Completion, GenerationError, TokenEvent
from tests.serve.fake_engine import FakeEngine, running


def feed(handle: RequestHandle, texts: list[str], *, fail: str | None = None, delay: float = 0.002) -> threading.Thread:
    """A stand-in for the decode thread: emits one event per text, then finishes (or fails) the handle."""

    def run() -> None:
        for text in texts:
            time.sleep(delay)
            handle.emit(TokenEvent(text))
        if fail is not None:
            handle.fail(fail)
        else:
            handle.finish(Completion("".join(texts), 1, len(texts), "length"))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def read(handle: RequestHandle) -> list[str]:
    return [event.text async for event in handle.aevents()]


def test_an_async_reader_gets_every_event_in_order_and_the_result() -> None:
    handle = RequestHandle()
    early = [f"e{i}" for i in range(3)]
    for text in early:  # emitted before anyone subscribed: they wait in the backlog
        handle.emit(TokenEvent(text))
    late = [f"t{i}" for i in range(50)]

    async def consume() -> tuple[list[str], Completion, Completion]:
        waiting = asyncio.ensure_future(handle.aresult(10))  # awaits from before the end
        await asyncio.sleep(0)
        feeder = feed(handle, late)
        texts = await read(handle)
        feeder.join()
        return texts, await waiting, await handle.aresult(0)

    texts, waited, after = asyncio.run(consume())
    assert texts == early + late
    assert waited is after and waited.text == "".join(late) and waited.finish_reason == "length"
    assert handle.result(0) is waited  # the blocking side still answers


def test_a_reader_that_subscribes_after_the_end_gets_the_backlog_and_blocking_readers_still_end() -> None:
    handle = RequestHandle()
    feed(handle, ["a", "b", "c"], delay=0).join()
    assert asyncio.run(read(handle)) == ["a", "b", "c"]
    assert list(handle.events()) == []  # a second reader ends at once instead of blocking
    assert asyncio.run(read(handle)) == []


def test_blocking_readers_are_unchanged() -> None:
    handle = RequestHandle()
    feed(handle, ["x", "y"])
    assert [e.text for e in handle.events()] == ["x", "y"] and handle.result(1).text == "xy"


def test_a_failure_reaches_the_async_reader_and_the_waiters_as_generation_error() -> None:
    handle = RequestHandle()

    async def consume() -> tuple[list[str], BaseException | None]:
        waiting = asyncio.ensure_future(handle.aresult(10))
        await asyncio.sleep(0)
        feed(handle, ["one"], fail="decoding failed for this request")
        texts: list[str] = []
        with pytest.raises(GenerationError, match="decoding failed"):
            async for event in handle.aevents():
                texts.append(event.text)
        return texts, await asyncio.gather(waiting, return_exceptions=True)

    texts, (waited,) = asyncio.run(consume())
    assert texts == ["one"] and isinstance(waited, GenerationError)
    with pytest.raises(GenerationError):
        asyncio.run(handle.aresult(0))


def test_aresult_times_out_then_a_late_finish_is_harmless() -> None:
    handle = RequestHandle()

    async def wait() -> float:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="within 0.05 s"):
            await handle.aresult(0.05)
        return time.monotonic() - start

    assert asyncio.run(wait()) < 2
    assert not handle.done
    assert handle.finish(Completion("", 1, 0, "length"))  # the timed-out waiter has left; nothing to wake
    assert asyncio.run(handle.aresult(0)).finish_reason == "length"


def test_pushes_to_a_closed_loop_are_ignored() -> None:
    handle = RequestHandle()
    loop = asyncio.new_event_loop()
    handle._subscribe(loop)  # an async reader whose server loop has gone away without unsubscribing
    loop.close()
    handle.emit(TokenEvent("a"))  # from the decode thread: must not raise
    assert handle.finish(Completion("a", 1, 1, "length")) and handle.result(0).text == "a"


class LoopProbe:
    """Wraps the app to learn the server's event loop, so the test can read that loop's anyio thread limiter
    (Starlette's `run_in_threadpool` borrows a token of it per worker thread in use)."""

    def __init__(self, app: Any) -> None:
        self.app, self.loop = app, None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)

    def borrowed(self) -> float:
        async def tokens() -> float:
            return anyio.to_thread.current_default_thread_limiter().borrowed_tokens

        return asyncio.run_coroutine_threadsafe(tokens(), self.loop).result(5)


@pytest.mark.parametrize("stream", [True, False])
def test_concurrent_requests_hold_no_worker_thread_while_they_decode(stream: bool) -> None:
    engine, clients, tokens = FakeEngine(), 8, 60  # "SLOW": a token every 50 ms, so 3 s per request
    probe = LoopProbe(create_app(engine))
    lines: list[list[str]] = [[] for _ in range(clients)]
    replies: list[Any] = [None] * clients

    def call(i: int, url: str) -> None:
        body = {"model": "tuned", "prompt": "SLOW", "max_tokens": tokens, "stream": stream}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as reply:
            for line in reply.iter_lines():
                if line:
                    lines[i].append(line)
            replies[i] = reply

    with running(probe) as url:
        threads = [threading.Thread(target=call, args=(i, url), daemon=True) for i in range(clients)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        # Every request submitted and decoding (streams have sent tokens); the submissions' threads returned.
        while not (len(engine.submitted) == clients and (not stream or all(len(got) >= 3 for got in lines))):
            assert time.monotonic() < deadline, "the requests did not start"
            time.sleep(0.02)
        first, settle = probe.borrowed(), time.monotonic() + 1.5  # a submission's thread may still be returning
        while probe.borrowed() and time.monotonic() < settle:
            time.sleep(0.02)
        samples = []
        for _ in range(20):
            samples.append(probe.borrowed())
            time.sleep(0.02)
        decoding = sum(not handle.done for handle in engine.submitted)
        for thread in threads:
            thread.join(60)
    # No request waits in (or polls through) the thread pool while it decodes.
    assert samples == [0] * 20, f"worker threads borrowed while {clients} requests decode: {first}, then {samples}"
    assert decoding == clients  # the samples were taken while every request was still waiting for tokens
    assert all(reply.status_code == 200 for reply in replies)
    if stream:
        assert all(sum('"text": "s"' in line or '"text":"s"' in line for line in got) == tokens for got in lines)
        assert all(got[-1] == "data: [DONE]" for got in lines)
    else:
        assert all('"completion_tokens":' + str(tokens) in "".join(got).replace(" ", "") for got in lines)
