"""From a validated request to engine submissions and back: one submission per (prompt, choice), the results
waited for within the request's deadline, a stream relayed event by event and cancelled if the client leaves.

Submission (tokenised prompts handed to the engine) runs in a worker thread, once per request; the results are
awaited on the event loop (`handle.aresult`), so a request waiting for its tokens holds no thread and the loop
keeps serving /health and /metrics while requests decode.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, replace
from typing import Any

from smoltune.serve.types import MAX_SEED, Completion, EngineClosed, EngineFull, GenerationError, GenerationParams

log = logging.getLogger("smoltune.serve")
DEADLINE_GRACE_S = 5.0  # how long past its deadline a result is awaited before the API gives up on the engine


class ApiError(Exception):
    """An answer in OpenAI's error shape; the message is shown to the client, so it never holds exception text."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.headers = status, message, kind, param, headers
        self.code = code


def internal_error(err: BaseException) -> ApiError:
    """A 500 whose body says only "internal error" and an id; the traceback is logged under that id."""
    request_id = uuid.uuid4().hex[:12]
    log.error("internal error %s", request_id, exc_info=err)
    return ApiError(500, f"internal error (request id {request_id})", "server_error")


@dataclass(frozen=True)
class Job:
    """One choice to generate: which prompt (ids and text), which adapter, its settings, its place in the reply."""

    index: int  # the choice's index in the reply
    prompt: int  # which of the request's prompts
    prompt_ids: list[int]
    prompt_text: str
    adapter: str | None
    params: GenerationParams


def expand_choices(prompts: list[tuple[list[int], str]], adapter: str | None, params: GenerationParams, n: int):
    """n jobs per prompt, indexed prompt-major as OpenAI orders choices. Sampled choices get distinct seeds
    derived from the request's (seed + i), so the request stays reproducible; greedy ones are identical."""
    jobs = []
    for p, (ids, text) in enumerate(prompts):
        for i in range(n):
            seed = params.seed
            if seed is not None and not params.greedy:
                seed = (seed + i) % (MAX_SEED + 1)
            jobs.append(Job(p * n + i, p, ids, text, adapter, replace(params, seed=seed)))
    return jobs


def engine_refusal(err: Exception, param: str) -> ApiError:
    if isinstance(err, EngineFull):
        return ApiError(503, "The server is at capacity; retry shortly.", "server_error", headers={"Retry-After": "1"})
    if isinstance(err, EngineClosed):
        return ApiError(503, "The server is shutting down.", "server_error", headers={"Retry-After": "5"})
    return ApiError(400, str(err), param=param)  # ValueError: the engine's message is written for clients


def submit_all(engine: Any, jobs: list[Job], param: str) -> list[Any]:
    """A handle per job; greedy jobs of the same prompt share one (their answers are identical)."""
    handles: list[Any] = []
    shared: dict[tuple, Any] = {}
    try:
        for job in jobs:
            key = (tuple(job.prompt_ids), job.params) if job.params.greedy else None
            if key is not None and key in shared:
                handles.append(shared[key])
                continue
            handle = engine.submit(job.prompt_ids, job.adapter, job.params)
            handles.append(handle)
            if key is not None:
                shared[key] = handle
    except (ValueError, EngineFull, EngineClosed) as err:
        for handle in handles:
            handle.cancel()
        raise engine_refusal(err, param) from None
    return handles


async def wait_all(handles: list[Any], deadline_s: float | None) -> list[Completion]:
    """Every handle's result; a deadline passed or a failed generation becomes an API error (and frees the rest).
    The handles share one wait of deadline + grace (they were submitted together)."""
    results: dict[int, Completion] = {}
    loop = asyncio.get_running_loop()
    end = None if deadline_s is None else loop.time() + deadline_s + DEADLINE_GRACE_S
    try:
        for handle in handles:
            if id(handle) not in results:
                timeout = None if end is None else max(0.0, end - loop.time())
                results[id(handle)] = await handle.aresult(timeout)
    except TimeoutError:
        raise deadline_error(deadline_s) from None
    except GenerationError as err:
        raise ApiError(500, str(err) or "generation failed", "server_error") from None
    finally:  # also when the awaiting task is cancelled
        for handle in handles:
            if id(handle) not in results:
                handle.cancel()
    done = [results[id(h)] for h in handles]
    if any(d.finish_reason == "deadline" for d in done):
        raise deadline_error(deadline_s)
    return done


def deadline_error(deadline_s: float | None) -> ApiError:
    return ApiError(504, f"The request ran past the server's time limit ({deadline_s} s, --request-timeout); "
                         "ask for fewer tokens.", "timeout_error")  # fmt: skip
