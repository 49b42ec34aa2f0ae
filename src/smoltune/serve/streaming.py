"""Server-sent events for one streamed choice, relayed from the engine's `handle.aevents()` as tokens decode.

The relay awaits each event on the event loop (the decode thread hands it over), so a stream holds no worker
thread: many concurrent streams cost the decode thread no GIL contention from threads waiting on their queues.

A client that disconnects cancels its generation: Starlette cancels this generator when the connection drops
(the `finally` below), and each event also checks `request.is_disconnected()` for servers that do not. A failed
generation or a passed deadline becomes an error event in OpenAI's shape, then `[DONE]`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from smoltune.serve import openai_format as fmt
from smoltune.serve.dispatch import deadline_error, internal_error
from smoltune.serve.types import GenerationError


async def relay(
    handle: Any,
    request: Any,
    *,
    chat: bool,
    model: str,
    logprobs: int | None,
    include_usage: bool,
    deadline_s: float | None,
    on_close: Any,
) -> AsyncIterator[str]:
    rid = fmt.new_id("chatcmpl" if chat else "cmpl")
    kind = "chat.completion.chunk" if chat else "text_completion"
    finished = False
    try:
        if chat:
            head = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            yield fmt.sse(fmt.envelope(kind, model, [head], rid))
        offset = 0
        async with aclosing(handle.aevents()) as events:  # closed at once if the client leaves mid-stream
            async for event in events:
                if await request.is_disconnected():
                    return
                if event.text or event.token is not None:
                    choice = fmt.stream_delta(chat, event.text, event.token, logprobs, None, offset)
                    yield fmt.sse(fmt.envelope(kind, model, [choice], rid))
                    offset += len(event.token.text) if event.token is not None else len(event.text)
        done = await handle.aresult()
        finished = True
        if done.finish_reason == "deadline":
            yield _error_event(deadline_error(deadline_s))
        else:
            last = fmt.stream_delta(chat, None, None, None, done.finish_reason)
            yield fmt.sse(fmt.envelope(kind, model, [last], rid))
            if include_usage:
                usage = fmt.usage(done.prompt_tokens, done.completion_tokens)
                yield fmt.sse({**fmt.envelope(kind, model, [], rid), "usage": usage})
    except GenerationError as err:
        finished = True
        yield fmt.sse(fmt.error_body(str(err) or "generation failed", "server_error"))
    except Exception as err:  # noqa: BLE001 - the client gets an id to quote, the log the traceback
        yield _error_event(internal_error(err))
    finally:
        if not finished:
            handle.cancel()  # the client left (or the stream broke): free the engine's row
        on_close()
    yield fmt.sse("[DONE]")


def _error_event(err: Any) -> str:
    return fmt.sse(fmt.error_body(err.message, err.kind, err.param))
