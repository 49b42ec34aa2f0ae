"""An OpenAI-compatible HTTP API over the serving engine (FastAPI): point the `openai` client, curl, LangChain or
lm-evaluation-harness at it and pick the base model or an adapter with `model`.

    smoltune serve --adapter tuned=runs/<run> --api-key "$KEY"              # then:
    curl http://127.0.0.1:8000/v1/chat/completions -H "authorization: Bearer $KEY" \\
      -H 'content-type: application/json' \\
      -d '{"model": "tuned", "messages": [{"role": "user", "content": "Add the two numbers: 3 and 4"}]}'

Errors come in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: an unknown model is 404, a bad
or unsupported field 400 naming it, a missing or wrong key 401, a refused adapter folder 403, a full or draining
engine 503 with Retry-After, a passed deadline 504; a 500 says "internal error" and an id, never exception text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request  # resolved by name in the routes' annotations
from starlette.concurrency import run_in_threadpool

from smoltune.data.prompts import format_prompt
from smoltune.serve import openai_format as fmt
from smoltune.serve.auth import Denied, allowed_adapter_path, check_bearer
from smoltune.serve.dispatch import ApiError, expand_choices, internal_error, submit_all, wait_all
from smoltune.serve.metrics import CountRequests, ServeMetrics
from smoltune.serve.protocol import (
    AdapterRequest,
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    Message,
    TokenizeRequest,
)
from smoltune.serve.streaming import relay

DEFAULT_MAX_TOKENS = 64


@dataclass(frozen=True)
class ServeOptions:
    """The server's policy (the `serve` command's options)."""

    api_key: str | None = None  # checked as a Bearer token on /v1/* and /tokenize, /detokenize
    allow_adapter_loading: bool = False  # POST /v1/adapters
    adapter_root: Path | None = None  # the only folders POST /v1/adapters may read
    max_adapters: int = 16  # attached adapters at most (each costs memory)
    request_timeout_s: float | None = 300.0  # a request's deadline, from submission


def chat_prompt(messages: list[Message], template: str, tokenizer: Any) -> str:
    """The last user message is the instruction; the system message and earlier turns the input, as training
    formats a conversation (smoltune.data.formats), so an adapter sees the prompt shape it learnt."""
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last_user is None:
        raise ApiError(400, "messages: at least one user message", param="messages")
    system = {"system", "developer"}
    history = [m.content for m in messages[:last_user] if m.role in system]
    history += [f"{m.role.capitalize()}: {m.content}" for m in messages[:last_user] if m.role not in system]
    return format_prompt({"instruction": messages[last_user].content, "input": "\n".join(history)}, template, tokenizer)


def create_app(engine: Any, options: ServeOptions | None = None, metrics: ServeMetrics | None = None) -> Any:
    """The FastAPI app, wrapped in the request counter of /metrics."""
    from fastapi import Depends, FastAPI

    options = options or ServeOptions()
    metrics = metrics or ServeMetrics()
    metrics.base_name = engine.base_name
    app = FastAPI(title="smoltune serve", docs_url=None, redoc_url=None, openapi_url=None)
    _error_handlers(app)

    def authorised(request: Request) -> None:
        try:
            check_bearer(request.headers.get("authorization"), options.api_key)
        except Denied as err:
            raise ApiError(err.status, err.message, "invalid_request_error", code=err.code) from None

    guard = [Depends(authorised)]
    _open_routes(app, engine, metrics)
    _model_routes(app, engine, options, guard)
    _generation_routes(app, engine, options, metrics, guard)
    return CountRequests(app, metrics, {r.path for r in app.routes})


def pick(engine: Any, model: str | None, request: Request) -> tuple[str | None, str]:
    """(adapter or None for the base, prompt template) of a request's `model`; remembered for /metrics."""
    if model is None or model == engine.base_name:
        request.state.model = engine.base_name
        return None, "chat" if getattr(engine.tokenizer, "chat_template", None) else "alpaca"
    if model in engine.adapters:
        request.state.model = model
        return model, engine.adapters[model].template
    served = ", ".join([engine.base_name, *engine.adapters])
    raise ApiError(404, f"The model '{model}' does not exist; served: {served}", param="model")


def _open_routes(app: Any, engine: Any, metrics: ServeMetrics) -> None:
    """No key: load balancers and Prometheus reach these (documented in docs/serving.md)."""

    # async: they never block, and the thread pool (submissions, the plain def routes) may be busy.
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": [engine.base_name, *engine.adapters]}

    @app.get("/metrics")
    async def prometheus() -> Any:
        from fastapi.responses import Response

        body, content_type = metrics.render()
        return Response(body, media_type=content_type)


def _model_routes(app: Any, engine: Any, options: ServeOptions, guard: list) -> None:
    @app.get("/v1/models", dependencies=guard)
    def models() -> dict:
        names = [engine.base_name, *engine.adapters]
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "smoltune"}
                                           for n in names]}  # fmt: skip

    @app.post("/v1/adapters", dependencies=guard)
    def add_adapter(body: AdapterRequest) -> dict:
        return _attach(engine, body, options)

    @app.post("/tokenize", dependencies=guard)
    def tokenize(body: TokenizeRequest, request: Request) -> dict:
        _, template = pick(engine, body.model, request)
        text = body.prompt if body.messages is None else chat_prompt(body.messages, template, engine.tokenizer)
        ids = engine.encode(text)
        return {"count": len(ids), "max_model_len": engine.max_positions, "tokens": ids}

    @app.post("/detokenize", dependencies=guard)
    def detokenize(body: DetokenizeRequest, request: Request) -> dict:
        pick(engine, body.model, request)
        return {"prompt": engine.tokenizer.decode(_checked_ids(engine, body.tokens, "tokens"))}


def _generation_routes(app: Any, engine: Any, options: ServeOptions, metrics: ServeMetrics, guard: list) -> None:
    @app.post("/v1/completions", dependencies=guard)
    async def completions(req: CompletionRequest, request: Request) -> Any:
        adapter, _ = pick(engine, req.model, request)
        prompts = await run_in_threadpool(lambda: [_prompt_pair(engine, p) for p in req.prompts()])
        logprobs = {"logprobs": req.logprobs, "echo_logprobs": req.echo and req.logprobs is not None}
        params = req.params(req.new_tokens(DEFAULT_MAX_TOKENS), options.request_timeout_s, **logprobs)
        jobs = expand_choices(prompts, adapter, params, req.n)

        def shape(done: list) -> dict:
            choices = [
                fmt.completion_choice(j.index, d, j.prompt_text, req.echo, req.logprobs is not None)
                for j, d in zip(jobs, done, strict=True)
            ]
            return _with_usage(fmt.envelope("text_completion", req.model, choices), jobs, done)

        return await _answer(engine, request, req, jobs, shape, metrics, options, chat=False, logprobs=req.logprobs)

    @app.post("/v1/chat/completions", dependencies=guard)
    async def chat_completions(req: ChatRequest, request: Request) -> Any:
        adapter, template = pick(engine, req.model, request)
        text = chat_prompt(req.messages, template, engine.tokenizer)
        ids = await run_in_threadpool(engine.encode, text)
        params = req.params(req.new_tokens(DEFAULT_MAX_TOKENS), options.request_timeout_s,
                            logprobs=req.logprob_count())  # fmt: skip
        jobs = expand_choices([(ids, text)], adapter, params, req.n)

        def shape(done: list) -> dict:
            choices = [fmt.chat_choice(j.index, d, req.logprob_count()) for j, d in zip(jobs, done, strict=True)]
            body = fmt.envelope("chat.completion", req.model, choices, fmt.new_id("chatcmpl"))
            return _with_usage(body, jobs, done)

        return await _answer(engine, request, req, jobs, shape, metrics, options, chat=True,
                             logprobs=req.logprob_count())  # fmt: skip


async def _answer(
    engine: Any, request: Any, req: Any, jobs: list, shape: Any, metrics: ServeMetrics, options: ServeOptions,
    *, chat: bool, logprobs: int | None,
) -> Any:  # fmt: skip
    """Submit the jobs (in a worker thread: tokenised prompts, once per request); stream the one choice, or await
    all and shape the reply (on the loop: no thread per waiting request)."""
    from fastapi.responses import StreamingResponse

    param = "messages" if chat else "prompt"
    if req.stream and len(jobs) > 1:
        raise ApiError(400, "stream: only with one prompt and n = 1", param="stream")
    handles = await run_in_threadpool(submit_all, engine, jobs, param)
    metrics.in_flight.inc()
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        events = relay(handles[0], request, chat=chat, model=req.model, logprobs=logprobs, include_usage=include_usage,
                       deadline_s=options.request_timeout_s, on_close=metrics.in_flight.dec)  # fmt: skip
        return StreamingResponse(events, media_type="text/event-stream")
    try:
        done = await wait_all(handles, options.request_timeout_s)
    finally:
        metrics.in_flight.dec()
    return shape(done)


def _with_usage(body: dict, jobs: list, done: list) -> dict:
    # Each prompt counts once (as OpenAI does), every choice's tokens count.
    prompt_tokens = sum({j.prompt: d.prompt_tokens for j, d in zip(jobs, done, strict=True)}.values())
    return {**body, "usage": fmt.usage(prompt_tokens, sum(d.completion_tokens for d in done))}


def _checked_ids(engine: Any, ids: list[int], param: str) -> list[int]:
    size = len(engine.tokenizer)
    bad = [i for i in ids if not 0 <= i < size]
    if bad:
        raise ApiError(400, f"{param}: token id {bad[0]} is outside the vocabulary (0..{size - 1})", param=param)
    return ids


def _prompt_pair(engine: Any, prompt: str | list[int]) -> tuple[list[int], str]:
    """(token ids, text) of one prompt given as text or as ids."""
    if isinstance(prompt, str):
        return engine.encode(prompt), prompt
    ids = _checked_ids(engine, prompt, "prompt")
    return ids, engine.tokenizer.decode(ids)


def _attach(engine: Any, body: AdapterRequest, options: ServeOptions) -> dict:
    from smoltune.errors import SmoltuneError
    from smoltune.serve.engine import adapter_source

    try:
        folder = allowed_adapter_path(body.path, options.adapter_root, options.allow_adapter_loading)
        if len(engine.adapters) >= options.max_adapters:
            raise Denied(403, f"The server holds its maximum of {options.max_adapters} adapters (--max-adapters).")
        if body.name in engine.adapters or body.name == engine.base_name:
            raise ApiError(400, f"name: '{body.name}' is already served; pick another name", param="name")
        if not folder.is_dir():
            raise ApiError(400, "path: not a folder on the server", param="path")
        try:
            adapter = adapter_source(body.name, folder)
        except SmoltuneError:
            raise ApiError(400, "path: neither a run folder nor an adapter folder", param="path") from None
        # A run folder names its adapter folder; that one must lie under the root too.
        allowed_adapter_path(adapter.path, options.adapter_root, options.allow_adapter_loading)
    except Denied as err:
        raise ApiError(err.status, err.message, "permission_error") from None
    engine.add_adapter(adapter)
    return {"object": "adapter", "id": adapter.name}


def _error_handlers(app: Any) -> None:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def error(status: int, message: str, kind: str, param: str | None = None, headers: dict | None = None,
              code: str | None = None) -> Any:  # fmt: skip
        return JSONResponse(fmt.error_body(message, kind, param, code), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return error(err.status, err.message, err.kind, err.param, err.headers, err.code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        # Starlette's own refusals (a body that is not JSON, an unknown route, a wrong method) in OpenAI's shape too.
        return error(err.status_code, str(err.detail), "invalid_request_error", None, getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, err: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(err.errors()[0])
        return error(400, message, "invalid_request_error", param)

    @app.exception_handler(Exception)
    async def internal(_: Request, err: Exception) -> JSONResponse:
        shaped = internal_error(err)
        return error(shaped.status, shaped.message, shaped.kind)


def _validation_message(first: dict) -> tuple[str, str | None]:
    """pydantic's first problem as "field: what is wrong", and the field, for OpenAI's `param`."""
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    # Union members add their type names to the path (e.g. prompt.str); keep the request's own field names.
    loc = [p for p in loc if p not in ("str", "int") and not p.startswith(("list[", "function-"))]
    where = ".".join(loc)
    if first.get("type") == "extra_forbidden":
        return f"{where}: this server does not support this field; remove it", where
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if not where and ":" in message:  # a model-level rule names its field first ("best_of: ...")
        where = message.split(":", 1)[0]
        return message, where
    return f"{where}: {message}" if where else message, where or None
