"""A stand-in for the serving engine that implements its contract (smoltune.serve.types; `submit`, `drain`, the
observer hooks) without a model, so the HTTP layer is tested in milliseconds. Its handles are the engine's own
`RequestHandle` (blocking and asyncio sides), fed from a thread per request as the decode thread feeds them. One
character is one token (ids are code points below 256). A prompt picks a behaviour:

- "FAIL" in it: decoding fails (GenerationError) after one token;
- "SLOW" in it: a token every 50 ms, for 200 tokens, so a test can disconnect or pass a deadline mid-stream;
- "FULL" in it: `submit` raises EngineFull;
- otherwise the answer is "answer" + one letter per further token (greedy), or letters derived from the seed.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from smoltune.serve.request import RequestHandle
from smoltune.serve.types import (
    Completion,
    EngineClosed,
    EngineFull,
    GenerationParams,
    TokenEvent,
    TokenLogprob,
)

VOCAB = 256
GREEDY_TEXT = "answer, and more text after it"


class CharTokenizer:
    chat_template = None
    eos_token_id = 0

    def __len__(self) -> int:
        return VOCAB

    def decode(self, ids: list[int], **_: Any) -> str:
        return "".join(chr(i) for i in ids)


@dataclass(frozen=True)
class FakeAdapter:
    name: str
    path: str
    template: str = "alpaca"


def token(text: str, logprob: float | None, k: int | None) -> TokenLogprob:
    top = None if k is None or logprob is None else {f"<{j}>": logprob - 1 - j for j in range(k)}
    return TokenLogprob(ord(text) % VOCAB, text, logprob, top)


class FakeHandle(RequestHandle):
    def __init__(self, engine: FakeEngine, prompt_ids: list[int], adapter: str | None, params: GenerationParams):
        super().__init__()
        self.engine, self.prompt_ids, self.adapter, self.params = engine, prompt_ids, adapter, params

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _answer(self) -> tuple[str, float]:
        prompt = self.engine.tokenizer.decode(self.prompt_ids)
        if "SLOW" in prompt:
            return "s" * 200, 0.05
        if self.params.greedy:
            return GREEDY_TEXT, 0.0
        rng = random.Random(self.params.seed)
        return "".join(rng.choice("abcdefghij") for _ in range(40)), 0.0

    def _run(self) -> None:
        start, obs = time.monotonic(), self.engine.observer
        answer, delay = self._answer()
        text, tokens, finish = "", [], "length"
        for i, char in enumerate(answer[: self.params.max_new_tokens]):
            if self.cancelled:
                finish = "cancelled"
                break
            if self.params.deadline_s is not None and time.monotonic() - start > self.params.deadline_s:
                finish = "deadline"
                break
            time.sleep(delay)
            if "FAIL" in self.engine.tokenizer.decode(self.prompt_ids) and i == 1:
                self.fail("decoding failed for this request")
                return
            tokens.append(token(char, -0.5 - 0.1 * i, self.params.logprobs))
            text += char
            cut = [text.index(s) for s in self.params.stop if s in text]
            if cut:
                text, finish = text[: min(cut)], "stop"
                break
            if obs is not None:
                (obs.on_first_token if i == 0 else obs.on_token)(self.adapter, 0.01)
            self.emit(TokenEvent(char, tokens[-1]))
        prompt_lp = ()
        if self.params.echo_logprobs:
            chars = [chr(i) for i in self.prompt_ids]
            prompt_lp = tuple(token(c, None if j == 0 else -1.0, self.params.logprobs) for j, c in enumerate(chars))
        if obs is not None:
            obs.on_batch(1)
            obs.on_finish(self.adapter, len(self.prompt_ids), len(tokens), finish)
        self.finish(Completion(text, len(self.prompt_ids), len(tokens), finish, tuple(tokens), prompt_lp))

    def cancel(self) -> None:
        super().cancel()
        self.engine.cancelled.append(self)


class FakeEngine:
    def __init__(self, observer: Any = None) -> None:
        self.base_name, self.tokenizer, self.observer = "fake-base", CharTokenizer(), observer
        self.adapters: dict[str, FakeAdapter] = {"tuned": FakeAdapter("tuned", "/nowhere")}
        self.max_positions = 512
        self.submitted: list[FakeHandle] = []
        self.cancelled: list[FakeHandle] = []
        self.closed = False

    def encode(self, text: str) -> list[int]:
        return [ord(c) % VOCAB for c in text]

    def add_adapter(self, adapter: Any) -> None:
        self.adapters[adapter.name] = adapter

    def submit(self, prompt_ids: list[int], adapter: str | None, params: GenerationParams) -> FakeHandle:
        if self.closed:
            raise EngineClosed("draining")
        if "FULL" in self.tokenizer.decode(prompt_ids):
            raise EngineFull("kv budget")
        if len(prompt_ids) + params.max_new_tokens > self.max_positions:
            raise ValueError(f"the prompt is {len(prompt_ids)} tokens; too long for {self.max_positions} positions")
        handle = FakeHandle(self, list(prompt_ids), adapter, params)
        self.submitted.append(handle)
        handle.start()
        return handle

    def drain(self, timeout_s: float) -> None:
        self.closed = True


@contextmanager
def running(app: Any) -> Iterator[str]:
    """The app served by uvicorn on 127.0.0.1 in a thread (a real socket, so real clients and disconnects)."""
    import uvicorn

    from tests.conftest import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
