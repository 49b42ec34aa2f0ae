"""The request bodies the serving API accepts, each field bounded, and their translation into `GenerationParams`.

Every model forbids unknown fields: a client that sends `tools`, `response_format`, `logit_bias`, ... gets a 400
naming the field instead of an answer that pretends it was honoured (vLLM's and OpenAI's reference behaviour for
the fields we do implement; see docs/serving.md for the list).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from smoltune.serve.types import ADAPTER_NAME, MAX_SEED, GenerationParams

MAX_STOP = 4  # OpenAI's cap on stop strings
MAX_CHOICES = 16  # n per prompt; a bound so one request cannot queue an unbounded amount of work
MAX_PROMPTS = 64  # prompts in one /v1/completions request (lm-eval batches several)
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's legacy completions cap; chat allows types.MAX_LOGPROBS


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(Strict):
    include_usage: bool = Field(False, description="Send a last chunk with the token usage (OpenAI's option).")


class _Sampling(Strict):
    model: str = Field(description="The base model's name or an adapter's name (GET /v1/models).")
    max_tokens: int | None = Field(None, ge=0, le=4096, description="Tokens to generate at most (default 64).")
    # Greedy by default (OpenAI samples at 1.0): this server's answers are reproducible unless a client asks.
    temperature: float = Field(0.0, ge=0, le=2, description="0 (or under GREEDY_BELOW) is greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass, in (0, 1].")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Makes a sampled answer reproducible.")
    stop: str | list[str] | None = Field(None, description=f"Up to {MAX_STOP} strings; the text ends before one.")
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="Choices per prompt.")
    stream: bool = Field(False, description="Server-sent events as tokens are decoded.")
    stream_options: StreamOptions | None = Field(None, description="include_usage: a last chunk with usage.")
    user: str | None = Field(None, max_length=256, description="Accepted and unused (OpenAI's end-user id).")
    # Clients such as LangChain send the penalties at their no-op value; anything else is refused, not ignored.
    frequency_penalty: float = Field(0.0, description="Only 0 (no penalty) is supported.")
    presence_penalty: float = Field(0.0, description="Only 0 (no penalty) is supported.")

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise ValueError(f"at most {MAX_STOP} non-empty strings")
        return stops

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        if value != 0:
            raise ValueError("only 0 is supported by this server; remove the field")
        return value

    @model_validator(mode="after")
    def _streamed_options(self) -> _Sampling:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only with stream: true")
        return self

    def new_tokens(self, default: int) -> int:
        return default if self.max_tokens is None else self.max_tokens

    def params(self, max_new_tokens: int, deadline_s: float | None, **logprobs: object) -> GenerationParams:
        return GenerationParams(
            max_new_tokens=max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=tuple(self.stop or ()),
            deadline_s=deadline_s,
            **logprobs,  # type: ignore[arg-type]
        )


TokenIds = list[int]
Prompt = str | list[str] | TokenIds | list[TokenIds]


class CompletionRequest(_Sampling):
    prompt: Prompt = Field(description="A string, a list of strings, a list of token ids, or a list of such lists.")
    echo: bool = Field(False, description="Prepend the prompt to the text (and its tokens' log-probs).")
    logprobs: int | None = Field(
        None, ge=0, le=MAX_COMPLETION_LOGPROBS, description="Log-probs of each token and its top k alternatives."
    )
    best_of: int | None = Field(None, ge=1, description="Only equal to n: choices are not ranked server-side.")

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, prompt: Prompt) -> Prompt:
        if isinstance(prompt, list):
            if not prompt or len(prompt) > MAX_PROMPTS:
                raise ValueError(f"between 1 and {MAX_PROMPTS} prompts")
            if any(isinstance(p, list) and not p for p in prompt):
                raise ValueError("a list of token ids must not be empty")
        return prompt

    @model_validator(mode="after")
    def _supported_combinations(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of: only best_of == n is supported (choices are not ranked server-side)")
        if self.stream and self.echo:
            raise ValueError("echo: not supported with stream: true")
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens: 0 only with echo: true (scoring the prompt)")
        return self

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: its text or its token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and isinstance(self.prompt[0], int):
            return [list(self.prompt)]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"] = Field(description="developer is read as system.")
    content: str = Field(description="The message's text.")


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1, description="The conversation; the last user turn is answered.")
    max_completion_tokens: int | None = Field(None, ge=1, le=4096, description="OpenAI's current max_tokens.")
    logprobs: bool = Field(False, description="Each generated token's log-prob.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Alternatives per token (needs logprobs).")

    @model_validator(mode="after")
    def _chat_rules(self) -> ChatRequest:
        if self.max_tokens == 0:
            raise ValueError("max_tokens: at least 1 for a chat completion")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: only with logprobs: true")
        if self.max_completion_tokens is not None and self.max_tokens is not None:
            raise ValueError("max_completion_tokens: send it or max_tokens, not both")
        return self

    def new_tokens(self, default: int) -> int:
        return self.max_completion_tokens or super().new_tokens(default)

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class TokenizeRequest(Strict):
    """vLLM's POST /tokenize: a prompt, or chat messages formatted as the model's chat requests are."""

    model: str | None = Field(None, description="Whose template formats messages; the base model by default.")
    prompt: str | None = Field(None, description="Text to tokenise as a completion prompt is.")
    messages: list[Message] | None = Field(None, description="Chat messages to format and tokenise.")

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("prompt: send either prompt or messages")
        return self


class DetokenizeRequest(Strict):
    model: str | None = Field(None, description="Accepted for vLLM's shape; every model shares one tokenizer.")
    tokens: list[int] = Field(description="Token ids to turn back into text.")


class AdapterRequest(Strict):
    name: str = Field(pattern=ADAPTER_NAME, max_length=128, description="The name requests use (no '.').")
    path: str = Field(description="A run folder or an adapter folder under --adapter-root.")
