"""GET /metrics: the server's counters in Prometheus' text format (prometheus-client), one registry per app so
two servers in one process (tests) never mix their figures. The engine feeds tokens, latencies and batch sizes
through its observer hooks; the API counts requests by route, status and model.

    curl -s http://127.0.0.1:8000/metrics | grep smoltune_
"""

from __future__ import annotations

from typing import Any

# Seconds; from a few ms per token (a GPU) to tens of seconds before a first token on a busy 2-core CPU.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServeMetrics:
    """The counters, and the engine observer (`on_batch`, `on_prefill`, `on_first_token`, `on_token`,
    `on_finish`)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("smoltune_requests", "HTTP requests answered.", ["route", "status", "model"],
                                registry=r)  # fmt: skip
        self.in_flight = Gauge("smoltune_requests_in_flight", "Generation requests being answered.", registry=r)
        self.prompt_tokens = Counter("smoltune_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r)
        self.generated_tokens = Counter("smoltune_generation_tokens", "Tokens generated.", ["model"], registry=r)
        self.finished = Counter("smoltune_request_finish", "Finished generations by reason.",
                                ["model", "finish_reason"], registry=r)  # fmt: skip
        self.first_token = Histogram("smoltune_time_to_first_token_seconds", "Submission to first token.",
                                     ["model"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.per_token = Histogram("smoltune_time_per_output_token_seconds", "Time between generated tokens.",
                                   ["model"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.prompt_tokens_cached = Counter("smoltune_prompt_tokens_cached", "Prompt tokens taken from the prefix "
                                            "cache instead of computed.", registry=r)  # fmt: skip
        self.batch = Histogram("smoltune_batch_size", "Rows in each decoding step.", buckets=BATCH_BUCKETS,
                               registry=r)  # fmt: skip
        self.base_name = "base"  # what an adapter of None is reported as; the app sets the served base's name

    def _model(self, adapter: str | None) -> str:
        return adapter or self.base_name

    # -- the engine observer -------------------------------------------------------------------------------

    def on_batch(self, size: int) -> None:
        self.batch.observe(size)

    def on_prefill(self, cached_tokens: int, computed_tokens: int) -> None:
        self.prompt_tokens_cached.inc(cached_tokens)

    def on_first_token(self, adapter: str | None, seconds: float) -> None:
        self.first_token.labels(self._model(adapter)).observe(seconds)

    def on_token(self, adapter: str | None, seconds: float) -> None:
        self.per_token.labels(self._model(adapter)).observe(seconds)

    def on_finish(self, adapter: str | None, prompt_tokens: int, completion_tokens: int, finish_reason: str) -> None:
        model = self._model(adapter)
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.generated_tokens.labels(model).inc(completion_tokens)
        self.finished.labels(model, finish_reason).inc()

    # -- the exposition ------------------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class CountRequests:
    """ASGI middleware counting each HTTP request by route, status and model (the handler stores the model in
    `request.state.model`). Pure ASGI rather than Starlette's BaseHTTPMiddleware, which would buffer streams and
    hide client disconnects from the handler."""

    def __init__(self, app: Any, metrics: ServeMetrics, routes: set[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def remember(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, remember)
        finally:
            # Unknown paths are one label value, so a scanner cannot grow the series without bound.
            route = scope["path"] if scope["path"] in self.routes else "other"
            model = scope.get("state", {}).get("model", "")
            self.metrics.requests.labels(route, str(status["code"]), model).inc()
