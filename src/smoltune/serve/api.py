"""An OpenAI-compatible HTTP API over the serving engine (FastAPI): point the `openai` client, curl or LangChain
at it and pick the base model or an adapter with `model`.

    smoltune serve --adapter tuned=runs/<run>                 # then:
    curl http://127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json' \\
      -d '{"model": "tuned", "messages": [{"role": "user", "content": "Add the two numbers: 3 and 4"}]}'

Errors come in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: an unknown model is 404, bad
parameters and a prompt too long are 400; never a stack trace.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from smoltune.data.prompts import format_prompt
from smoltune.errors import SmoltuneError
from smoltune.serve.engine import Adapter, Completion, Engine, adapter_source


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class _Sampling(BaseModel):
    model: str
    max_tokens: int = Field(64, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Sampling):
    prompt: str


class AdapterRequest(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*$")
    path: str


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


def chat_prompt(messages: list[Message], template: str, tokenizer: Any) -> str:
    """The last user message is the instruction; the system message and earlier turns the input, as training
    formats a conversation (smoltune.data.formats), so an adapter sees the prompt shape it learnt."""
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last_user is None:
        raise ApiError(400, "messages need at least one user message", param="messages")
    history = [m.content for m in messages[:last_user] if m.role == "system"]
    history += [f"{m.role.capitalize()}: {m.content}" for m in messages[:last_user] if m.role != "system"]
    return format_prompt({"instruction": messages[last_user].content, "input": "\n".join(history)}, template, tokenizer)


def create_app(engine: Engine) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="smoltune serve", docs_url=None, redoc_url=None)

    def error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
        body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
        return JSONResponse(body, status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return error(err.status, err.message, err.kind, err.param)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        return error(400, f"{where}: {first['msg']}", "invalid_request_error", where or None)

    @app.exception_handler(Exception)
    async def internal(_: Request, err: Exception) -> JSONResponse:
        return error(500, f"{type(err).__name__}: {err}", "server_error")

    def names() -> list[str]:
        return [engine.base_name, *engine.adapters]

    def pick(model: str) -> tuple[str | None, str]:
        """(adapter or None for the base, prompt template)."""
        if model == engine.base_name:
            return None, "chat" if getattr(engine.tokenizer, "chat_template", None) else "alpaca"
        if model in engine.adapters:
            return model, engine.adapters[model].template
        raise ApiError(404, f"The model '{model}' does not exist; served: {', '.join(names())}", param="model")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "models": names()}

    @app.get("/v1/models")
    def models() -> dict:
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "smoltune"} for n in names()]
        return {"object": "list", "data": data}

    @app.post("/v1/adapters")
    def add_adapter(body: AdapterRequest) -> dict:
        if body.path.startswith(("http://", "https://")) or not Path(body.path).expanduser().exists():
            raise ApiError(400, f"path {body.path}: a local run or adapter folder that exists", param="path")
        try:
            adapter: Adapter = adapter_source(body.name, body.path)
        except SmoltuneError as err:
            raise ApiError(400, str(err), param="path") from None
        engine.add_adapter(adapter)
        return {"object": "adapter", "id": adapter.name, "path": adapter.path}

    def run(req: _Sampling, prompt: str, adapter: str | None, chat: bool) -> Any:
        ids = engine.encode(prompt)
        try:
            engine.check_length(ids, req.max_tokens)
        except ValueError as err:
            raise ApiError(400, str(err), param="messages" if chat else "prompt") from None
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        sampling = {"temperature": req.temperature, "top_p": req.top_p, "seed": req.seed} if req.temperature else None
        if req.stream:
            pieces = engine.stream(ids, adapter, req.max_tokens, stop, sampling)
            return StreamingResponse(_sse(pieces, req.model, chat), media_type="text/event-stream")
        if sampling:
            done = engine.sample(ids, adapter, req.max_tokens, stop, sampling)
        else:
            done = engine.complete(ids, adapter, req.max_tokens, stop)
        return _response(done, req.model, chat)

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatRequest) -> Any:
        adapter, template = pick(req.model)
        return run(req, chat_prompt(req.messages, template, engine.tokenizer), adapter, chat=True)

    @app.post("/v1/completions")
    def completions(req: CompletionRequest) -> Any:
        adapter, _ = pick(req.model)
        return run(req, req.prompt, adapter, chat=False)

    return app


def _usage(done: Completion) -> dict[str, int]:
    total = done.prompt_tokens + done.completion_tokens
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens, "total_tokens": total}


def _response(done: Completion, model: str, chat: bool) -> dict:
    base = {"id": f"smoltune-{uuid.uuid4().hex[:12]}", "created": int(time.time()), "model": model}
    if chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": done.text},
            "finish_reason": done.finish_reason,
        }
        return {**base, "object": "chat.completion", "choices": [choice], "usage": _usage(done)}
    choice = {"index": 0, "text": done.text, "finish_reason": done.finish_reason, "logprobs": None}
    return {**base, "object": "text_completion", "choices": [choice], "usage": _usage(done)}


def _sse(pieces: Iterator[str | Completion], model: str, chat: bool) -> Iterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
    head = {"id": f"smoltune-{uuid.uuid4().hex[:12]}", "created": int(time.time()), "model": model}
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: str | None, finish: str | None, first: bool = False) -> str:
        if chat:
            content = {"role": "assistant", "content": ""} if first else ({"content": delta} if delta else {})
            choice = {"index": 0, "delta": content, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
        return "data: " + json.dumps({**head, "object": kind, "choices": [choice]}) + "\n\n"

    if chat:
        yield chunk(None, None, first=True)
    for piece in pieces:
        if isinstance(piece, Completion):
            yield chunk(None, piece.finish_reason)
        else:
            yield chunk(piece, None)
    yield "data: [DONE]\n\n"
