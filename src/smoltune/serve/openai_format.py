"""OpenAI's response shapes built from the engine's results: completions (with legacy log-probs and echo), chat
completions (with chat log-probs), their streamed chunks, usage and errors. Pure functions of plain data, so the
shapes are tested without a model.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence

from smoltune.serve.types import Completion, TokenLogprob


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def envelope(kind: str, model: str, choices: list[dict], request_id: str | None = None) -> dict:
    return {"id": request_id or new_id("cmpl"), "object": kind, "created": int(time.time()), "model": model,
            "choices": choices}  # fmt: skip


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


def _top(token: TokenLogprob) -> dict[str, float]:
    """vLLM's convention: the chosen token is listed among its alternatives (k or k + 1 entries)."""
    top = dict(token.top or {})
    if token.logprob is not None:
        top.setdefault(token.text, token.logprob)
    return top


def completion_logprobs(tokens: Sequence[TokenLogprob], first_offset: int = 0) -> dict:
    """The legacy completions shape; a token without a log-prob (the first echoed one) has null entries."""
    offsets, at = [], first_offset
    for token in tokens:
        offsets.append(at)
        at += len(token.text)
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [None if t.logprob is None else _top(t) for t in tokens],
        "text_offset": offsets,
    }


def completion_choice(index: int, done: Completion, prompt_text: str, echo: bool, logprobs: bool) -> dict:
    text = prompt_text + done.text if echo else done.text
    shaped = None
    if logprobs:
        shaped = completion_logprobs([*done.prompt_logprobs, *done.tokens] if echo else done.tokens)
    return {"index": index, "text": text, "logprobs": shaped, "finish_reason": done.finish_reason}


def _chat_token(text: str, logprob: float) -> dict:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokens: Sequence[TokenLogprob], top_k: int) -> dict:
    content = []
    for token in tokens:
        alternatives = sorted((token.top or {}).items(), key=lambda kv: -kv[1])[:top_k]
        entry = _chat_token(token.text, token.logprob if token.logprob is not None else float("-inf"))
        content.append({**entry, "top_logprobs": [_chat_token(t, lp) for t, lp in alternatives]})
    return {"content": content, "refusal": None}


def chat_choice(index: int, done: Completion, top_k: int | None) -> dict:
    return {
        "index": index,
        "message": {"role": "assistant", "content": done.text},
        "logprobs": None if top_k is None else chat_logprobs(done.tokens, top_k),
        "finish_reason": done.finish_reason,
    }


def sse(payload: dict | str) -> str:
    """One server-sent event; `[DONE]` ends a stream as OpenAI's does."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def stream_delta(
    chat: bool, text: str | None, token: TokenLogprob | None, logprobs: int | None, finish: str | None, offset: int = 0
) -> dict:
    """One streamed choice (index 0): a text piece, its token's log-probs when asked (`offset`: where the token
    starts in the streamed text), or the finish reason."""
    shaped = None
    if chat:
        if token is not None and logprobs is not None:
            shaped = chat_logprobs([token], logprobs)
        delta = {"content": text} if text else {}
        return {"index": 0, "delta": delta, "logprobs": shaped, "finish_reason": finish}
    if token is not None and logprobs is not None:
        shaped = completion_logprobs([token], offset)
    return {"index": 0, "text": text or "", "logprobs": shaped, "finish_reason": finish}
