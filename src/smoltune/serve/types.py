"""What the serving API and the engine exchange: one request's settings, the tokens it streams, its result.

The API (`api.py`) validates a client's body into `GenerationParams`, submits it with `Engine.submit`, and reads
`TokenEvent`s from the returned `RequestHandle` (streaming) or waits for its `Completion`. The engine
(`engine.py`) decodes every running request in one batch, token by token (continuous batching).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Bounds every sampling parameter is held to before it reaches torch (a seed past 64 bits or a temperature of
# 1e-45 used to raise inside the generation thread).
MAX_SEED = 2**64 - 1
GREEDY_BELOW = 1e-5  # a temperature under this is greedy decoding, as vLLM treats it
MAX_LOGPROBS = 20
# An adapter's name: PEFT keeps each adapter's weights in torch ModuleDicts, whose keys may not contain ".".
ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"  # top alternatives per token; OpenAI's completions allow 5, chat 20


@dataclass(frozen=True)
class GenerationParams:
    """One request's decoding settings, already validated by the API."""

    max_new_tokens: int  # 0 with echo_logprobs: score the prompt only
    temperature: float = 0.0  # < GREEDY_BELOW: greedy
    top_p: float = 1.0  # in (0, 1]
    seed: int | None = None  # in [0, MAX_SEED]; a request's samples never depend on its batch neighbours
    stop: tuple[str, ...] = ()  # at most 4; the text is cut before the first one found
    logprobs: int | None = None  # None: no log-probs; k >= 0: each token's log-prob and its top k alternatives
    echo_logprobs: bool = False  # also the prompt tokens' log-probs (the first token's is None)
    deadline_s: float | None = None  # seconds from submission after which the request ends with "deadline"

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


@dataclass(frozen=True)
class TokenLogprob:
    """One token as decoded or scored: its id, its text, its log-prob and the top alternatives {text: logprob}."""

    token_id: int
    text: str
    logprob: float | None
    top: dict[str, float] | None = None


@dataclass(frozen=True)
class TokenEvent:
    """Text released to the client after one decoding step (stop strings withheld until ruled out)."""

    text: str
    token: TokenLogprob | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string), "length", "deadline", or "cancelled" (handle.cancel())
    tokens: tuple[TokenLogprob, ...] = ()  # the generated tokens (with log-probs when asked)
    prompt_logprobs: tuple[TokenLogprob, ...] = field(default=())  # with echo_logprobs: one per prompt token


class EngineFull(RuntimeError):
    """The KV-cache budget cannot hold this request now (the API answers 503; the client may retry)."""


class EngineClosed(RuntimeError):
    """The engine is draining for shutdown and takes no new requests (503)."""


class GenerationError(RuntimeError):
    """Decoding this request failed; the message is safe to show a client (no internal exception text)."""
