"""Generated request bodies for every route of the serving API, in front of the stand-in engine of
tests/serve/fake_engine.py (no model): each is answered with a 2xx or a 4xx/503 in OpenAI's error shape, never a
500 or a hang, and the server still answers /health and a normal request afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smoltune.serve.api import ServeOptions, create_app
from smoltune.serve.metrics import ServeMetrics
from tests.fuzz.strategies import nested
from tests.serve.fake_engine import FakeEngine, running

KEY = "sk-fuzz"
AUTH = {"authorization": f"Bearer {KEY}"}
ROUTES = ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize", "/v1/adapters"]
FIELDS = [
    "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "n",
    "stop", "stream", "logprobs", "top_logprobs", "echo", "best_of", "tools", "response_format", "user", "tokens",
    "name", "path", "stream_options", "frequency_penalty", "role", "content", "x",
]  # fmt: skip
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["base", "tuned", "user", "assistant", "system", 1e-45, 2**64, -1, 0, "../../etc"]),
)  # fmt: skip
values = nested(scalars, FIELDS, width=4, max_leaves=12)
bodies = st.dictionaries(st.sampled_from(FIELDS), values, max_size=7)
FUZZ = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("adapters")
    metrics = ServeMetrics()
    engine = FakeEngine()
    engine.observer = metrics
    options = ServeOptions(
        api_key=KEY, allow_adapter_loading=True, adapter_root=root, max_adapters=2, request_timeout_s=2.0
    )
    with running(create_app(engine, options, metrics)) as url:
        yield url
        assert httpx.get(f"{url}/health", timeout=5).json()["status"] == "ok"


def check(reply: httpx.Response) -> None:
    assert reply.status_code < 500 or reply.status_code in (503, 504), (reply.status_code, reply.text[:300])
    if reply.status_code >= 400:
        error = reply.json()["error"]
        assert error["message"] and "Traceback" not in error["message"]


@FUZZ
@given(st.sampled_from(ROUTES), bodies)
def test_generated_bodies(server: str, route: str, body: dict) -> None:
    check(httpx.post(f"{server}{route}", json=body, headers=AUTH, timeout=30))


@FUZZ
@given(st.sampled_from(ROUTES), st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_bodies_that_are_not_json_objects(server: str, route: str, raw: bytes) -> None:
    headers = {**AUTH, "content-type": "application/json"}
    check(httpx.post(f"{server}{route}", content=raw, headers=headers, timeout=30))


@FUZZ
@given(st.sampled_from(["/v1/completions", "/v1/chat/completions"]), bodies)
def test_generated_streams(server: str, route: str, body: dict) -> None:
    body = {**body, "stream": True}
    with httpx.stream("POST", f"{server}{route}", json=body, headers=AUTH, timeout=30) as reply:
        if reply.status_code != 200:
            reply.read()
            check(reply)
            return
        for line in reply.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                json.loads(line[len("data: ") :])  # every event is JSON (an error event included)
