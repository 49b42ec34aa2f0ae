"""The HTTP API with real clients (the `openai` client, httpx) over a real socket on 127.0.0.1, in front of the
stand-in engine of tests/serve/fake_engine.py (no model): OpenAI's shapes (log-probs, echo, n, stop, token-id
prompts, chat log-probs), refused fields, /tokenize and /detokenize, the API key, adapter loading policy, the hang
cases each followed by /health and a normal request, streaming disconnects, 503s and /metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from smoltune.serve.api import ServeOptions, create_app
from smoltune.serve.metrics import ServeMetrics
from tests.serve.fake_engine import GREEDY_TEXT, FakeEngine, running

KEY = "sk-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def adapter_root(tmp_path: Path) -> Path:
    root = tmp_path / "adapters"
    (root / "ok").mkdir(parents=True)
    (root / "ok" / "adapter_config.json").write_text("{}")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "adapter_config.json").write_text("{}")
    return root


@pytest.fixture
def server(engine: FakeEngine, adapter_root: Path) -> Iterator[str]:
    metrics = ServeMetrics()
    engine.observer = metrics
    options = ServeOptions(api_key=KEY, allow_adapter_loading=True, adapter_root=adapter_root, max_adapters=2,
                           request_timeout_s=1.0)  # fmt: skip
    with running(create_app(engine, options, metrics)) as url:
        yield url


@pytest.fixture
def client(server: str):  # noqa: ANN201
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=30)


def post(server: str, path: str, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{server}{path}", json=body, headers=AUTH if headers is None else headers, timeout=30)


def still_answers(server: str) -> None:
    assert httpx.get(f"{server}/health", timeout=5).json()["status"] == "ok"
    reply = post(server, "/v1/completions", {"model": "tuned", "prompt": "hi", "max_tokens": 6})
    assert reply.status_code == 200 and reply.json()["choices"][0]["text"] == GREEDY_TEXT[:6]


def test_completion_logprobs_and_echo_in_openai_shape(client) -> None:  # noqa: ANN001
    reply = client.completions.create(model="tuned", prompt="abc", max_tokens=3, logprobs=2, echo=True)
    choice = reply.choices[0]
    assert choice.text == "abc" + GREEDY_TEXT[:3]
    lp = choice.logprobs
    assert lp.tokens == ["a", "b", "c", "a", "n", "s"]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # the first prompt token has no context
    assert lp.token_logprobs[1:3] == [-1.0, -1.0] and lp.token_logprobs[3] == pytest.approx(-0.5)
    assert lp.text_offset == [0, 1, 2, 3, 4, 5]
    assert set(lp.top_logprobs[3]) == {"a", "<0>", "<1>"}  # the chosen token among its top 2 (vLLM's convention)
    assert reply.usage.prompt_tokens == 3 and reply.usage.completion_tokens == 3


def test_echo_with_max_tokens_zero_scores_the_prompt_only(server: str) -> None:
    body = {"model": "tuned", "prompt": [[97, 98, 99]], "max_tokens": 0, "echo": True, "logprobs": 1}
    choice = post(server, "/v1/completions", body).json()["choices"][0]
    assert choice["text"] == "abc" and choice["logprobs"]["token_logprobs"] == [None, -1.0, -1.0]


def test_prompt_lists_give_n_choices_per_prompt_in_openai_order(server: str) -> None:
    body = {"model": "tuned", "prompt": ["x", "y"], "n": 2, "max_tokens": 4, "temperature": 0.8, "seed": 7}
    reply = post(server, "/v1/completions", body).json()
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2, 3]
    texts = [c["text"] for c in reply["choices"]]
    assert texts[0] != texts[1] and texts[0] == texts[2]  # distinct seeds per choice, derived from the request's
    again = post(server, "/v1/completions", body).json()
    assert [c["text"] for c in again["choices"]] == texts  # reproducible
    assert reply["usage"]["prompt_tokens"] == 2 and reply["usage"]["completion_tokens"] == 16


def test_token_id_prompts_and_stop_strings(client) -> None:  # noqa: ANN001
    reply = client.completions.create(model="tuned", prompt=[[104, 105], [111]], max_tokens=20, stop=[",", "zz"])
    assert [c.text for c in reply.choices] == ["answer", "answer"]
    assert {c.finish_reason for c in reply.choices} == {"stop"}


def test_chat_logprobs_n_and_max_completion_tokens(client) -> None:  # noqa: ANN001
    reply = client.chat.completions.create(
        model="tuned", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=4, logprobs=True,
        top_logprobs=3, n=2,
    )  # fmt: skip
    assert [c.index for c in reply.choices] == [0, 1]
    content = reply.choices[0].logprobs.content
    assert [t.token for t in content] == list(GREEDY_TEXT[:4])
    assert content[0].bytes == [ord("a")] and len(content[0].top_logprobs) == 3
    assert content[0].top_logprobs[0].logprob == pytest.approx(-1.5)
    assert reply.choices[0].message.content == GREEDY_TEXT[:4]


@pytest.mark.parametrize(
    ("path", "extra", "field"),
    [
        ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
        ("/v1/chat/completions", {"tools": []}, "tools"),
        ("/v1/chat/completions", {"tool_choice": "auto"}, "tool_choice"),
        ("/v1/chat/completions", {"functions": []}, "functions"),
        ("/v1/chat/completions", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ("/v1/completions", {"best_of": 3}, "best_of"),
        ("/v1/completions", {"logit_bias": {"1": 2}}, "logit_bias"),
        ("/v1/completions", {"suffix": "x"}, "suffix"),
        ("/v1/completions", {"logprobs": 6}, "logprobs"),
        ("/v1/completions", {"frequency_penalty": 0.5}, "frequency_penalty"),
        ("/v1/completions", {"seed": 2**70}, "seed"),
        ("/v1/completions", {"top_p": 0}, "top_p"),
        ("/v1/completions", {"temperature": 2.5}, "temperature"),
        ("/v1/completions", {"max_tokens": -1}, "max_tokens"),
        ("/v1/completions", {"stream": "maybe"}, "stream"),
        ("/v1/completions", {"stream_options": {"include_usage": True}}, "stream_options"),
        ("/v1/completions", {"n": 2, "stream": True}, "stream"),
        ("/v1/completions", {"echo": True, "stream": True}, "echo"),
        ("/v1/completions", {"prompt": [[999]]}, "prompt"),
    ],
)
def test_unsupported_or_out_of_bounds_fields_are_a_400_naming_them(
    server: str, path: str, extra: dict, field: str
) -> None:
    body = {"model": "tuned", "max_tokens": 2}
    body |= {"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {"prompt": "hi"}
    reply = post(server, path, body | extra)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == field and field in error["message"] and error["type"] == "invalid_request_error"


def test_hang_cases_answer_and_leave_the_server_answering(server: str, engine: FakeEngine) -> None:
    tiny = post(server, "/v1/completions", {"model": "tuned", "prompt": "hi", "max_tokens": 6, "temperature": 1e-45})
    assert tiny.json()["choices"][0]["text"] == GREEDY_TEXT[:6]  # below GREEDY_BELOW: greedy, not a division by ~0
    assert engine.submitted[-1].params.greedy
    still_answers(server)
    failed = post(server, "/v1/completions", {"model": "tuned", "prompt": "FAIL", "max_tokens": 6})
    assert failed.status_code == 500 and failed.json()["error"]["message"] == "decoding failed for this request"
    still_answers(server)
    late = post(server, "/v1/completions", {"model": "tuned", "prompt": "SLOW", "max_tokens": 100})
    assert late.status_code == 504 and "--request-timeout" in late.json()["error"]["message"]
    still_answers(server)
    full = post(server, "/v1/completions", {"model": "tuned", "prompt": "FULL", "max_tokens": 6})
    assert full.status_code == 503 and full.headers["retry-after"] == "1"
    still_answers(server)


def test_a_client_that_disconnects_mid_stream_cancels_its_generation(server: str, engine: FakeEngine) -> None:
    body = {"model": "tuned", "prompt": "SLOW", "max_tokens": 150, "stream": True}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, headers=AUTH, timeout=30) as reply:
        lines = reply.iter_lines()
        assert next(lines).startswith("data: ")
    deadline = time.monotonic() + 5
    while not engine.cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.cancelled and engine.cancelled[0].prompt_ids == engine.encode("SLOW")
    still_answers(server)


def test_streams_relay_tokens_then_finish_usage_and_done(client) -> None:  # noqa: ANN001
    stream = client.chat.completions.create(
        model="tuned", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True,
        stream_options={"include_usage": True}, logprobs=True,
    )  # fmt: skip
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == GREEDY_TEXT[:5]
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 5
    assert chunks[1].choices[0].logprobs.content[0].token == "a"


def test_a_generation_fault_in_a_stream_is_an_error_event_then_done(server: str) -> None:
    body = {"model": "tuned", "prompt": "FAIL", "max_tokens": 6, "stream": True}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, headers=AUTH, timeout=30) as reply:
        events = [line.removeprefix("data: ") for line in reply.iter_lines() if line]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["message"] == "decoding failed for this request"
    still_answers(server)


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": KEY}])
def test_every_v1_route_and_tokenizer_route_needs_the_key(server: str, headers: dict) -> None:
    routes = [("/v1/completions", {"model": "tuned", "prompt": "hi"}), ("/tokenize", {"prompt": "hi"}),
              ("/detokenize", {"tokens": [104]}), ("/v1/adapters", {"name": "x", "path": "/tmp"})]  # fmt: skip
    for path, body in routes:
        reply = post(server, path, body, headers)
        assert reply.status_code == 401, path
        assert reply.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server}/v1/models", headers=headers).status_code == 401
    assert httpx.get(f"{server}/health").status_code == 200 and httpx.get(f"{server}/metrics").status_code == 200


def test_adapter_loading_only_under_the_root_and_up_to_the_cap(server: str, adapter_root: Path) -> None:
    outside = adapter_root.parent / "outside"
    (adapter_root / "link").symlink_to(outside)
    for path in (str(outside), str(adapter_root / ".." / "outside"), str(adapter_root / "link")):
        reply = post(server, "/v1/adapters", {"name": "x", "path": path})
        assert reply.status_code == 403 and reply.json()["error"]["type"] == "permission_error", path
        assert str(adapter_root) not in reply.text  # the server's layout stays private
    assert post(server, "/v1/adapters", {"name": "ok", "path": str(adapter_root / "ok")}).status_code == 200
    capped = post(server, "/v1/adapters", {"name": "ok2", "path": str(adapter_root / "ok")})
    assert capped.status_code == 403 and "--max-adapters" in capped.json()["error"]["message"]


def test_adapter_loading_is_off_by_default(engine: FakeEngine, adapter_root: Path) -> None:
    with running(create_app(engine)) as url:
        reply = httpx.post(f"{url}/v1/adapters", json={"name": "ok", "path": str(adapter_root / "ok")})
        assert reply.status_code == 403 and "--allow-adapter-loading" in reply.json()["error"]["message"]
        # no key configured: the API is open
        assert httpx.post(f"{url}/tokenize", json={"prompt": "hi"}).json()["count"] == 2


def test_tokenize_and_detokenize_in_vllm_shape(server: str) -> None:
    counted = post(server, "/tokenize", {"model": "tuned", "prompt": "hey"}).json()
    assert counted == {"count": 3, "max_model_len": 512, "tokens": [104, 101, 121]}
    chat = post(server, "/tokenize", {"messages": [{"role": "user", "content": "hey"}]}).json()
    assert chat["count"] > 3 and "hey" in post(server, "/detokenize", {"tokens": chat["tokens"]}).json()["prompt"]
    assert post(server, "/detokenize", {"tokens": [104, 105]}).json() == {"prompt": "hi"}
    assert post(server, "/tokenize", {"prompt": "a", "messages": []}).status_code == 400


def test_an_internal_error_hides_its_text_behind_a_request_id(server: str, engine: FakeEngine, caplog) -> None:  # noqa: ANN001
    def broken(*_: object) -> None:
        raise RuntimeError("secret /internal/path")

    engine.submit = broken  # type: ignore[method-assign]
    reply = post(server, "/v1/completions", {"model": "tuned", "prompt": "hi"})
    assert reply.status_code == 500 and "secret" not in reply.text
    message = reply.json()["error"]["message"]
    assert message.startswith("internal error (request id ")
    request_id = message.removeprefix("internal error (request id ").rstrip(")")
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and "secret /internal/path" in str(logged[0].exc_info[1])  # the server's log keeps the cause


def test_metrics_count_requests_tokens_and_latencies(server: str) -> None:
    post(server, "/v1/completions", {"model": "tuned", "prompt": "hi", "max_tokens": 4})
    post(server, "/v1/completions", {"model": "nope", "prompt": "hi"})
    text = httpx.get(f"{server}/metrics").text
    assert 'smoltune_requests_total{model="tuned",route="/v1/completions",status="200"} 1.0' in text
    assert 'smoltune_requests_total{model="",route="/v1/completions",status="404"} 1.0' in text
    assert 'smoltune_generation_tokens_total{model="tuned"} 4.0' in text
    assert 'smoltune_prompt_tokens_total{model="tuned"} 2.0' in text
    assert 'smoltune_time_to_first_token_seconds_count{model="tuned"} 1.0' in text
    assert 'smoltune_time_per_output_token_seconds_count{model="tuned"} 3.0' in text
    assert "smoltune_batch_size_count 1.0" in text and "smoltune_requests_in_flight 0.0" in text
