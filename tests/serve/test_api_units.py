"""The serving API's pure parts: request bounds, the key check, the exposure warning, seeds per choice and the
legacy log-prob shape."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from smoltune.serve.auth import Denied, check_bearer, exposure_warning
from smoltune.serve.dispatch import expand_choices
from smoltune.serve.openai_format import completion_logprobs
from smoltune.serve.protocol import ChatRequest, CompletionRequest
from smoltune.serve.types import MAX_SEED, GenerationParams, TokenLogprob


def test_prompt_shapes_become_one_entry_per_prompt() -> None:
    def prompts(prompt: object) -> list:
        return CompletionRequest(model="m", prompt=prompt).prompts()

    assert prompts("a") == ["a"]
    assert prompts(["a", "b"]) == ["a", "b"]
    assert prompts([1, 2]) == [[1, 2]]
    assert prompts([[1], [2, 3]]) == [[1], [2, 3]]
    with pytest.raises(ValidationError, match="must not be empty"):
        prompts([[1], []])


def test_chat_takes_max_completion_tokens_or_max_tokens() -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert ChatRequest(model="m", messages=messages, max_completion_tokens=7).new_tokens(64) == 7
    assert ChatRequest(model="m", messages=messages, max_tokens=5).new_tokens(64) == 5
    assert ChatRequest(model="m", messages=messages).new_tokens(64) == 64
    with pytest.raises(ValidationError, match="not both"):
        ChatRequest(model="m", messages=messages, max_tokens=5, max_completion_tokens=7)


def test_the_key_is_checked_as_a_bearer_token() -> None:
    check_bearer(None, None)  # no key configured: open
    check_bearer("Bearer k1", "k1")
    check_bearer("bearer k1", "k1")
    for header in (None, "k1", "Bearer", "Bearer k2", "Basic k1"):
        with pytest.raises(Denied) as caught:
            check_bearer(header, "k1")
        assert caught.value.status == 401


def test_a_non_loopback_host_without_a_key_is_warned_about() -> None:
    assert exposure_warning("0.0.0.0", None) and "--api-key" in exposure_warning("0.0.0.0", None)
    assert exposure_warning("example.org", None)
    assert exposure_warning("0.0.0.0", "k") is None
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("::1", None) is None
    assert exposure_warning("localhost", None) is None


def test_sampled_choices_get_distinct_seeds_within_64_bits() -> None:
    sampled = GenerationParams(max_new_tokens=4, temperature=0.7, seed=MAX_SEED)
    jobs = expand_choices([([1], "a"), ([2], "b")], None, sampled, 2)
    assert [j.index for j in jobs] == [0, 1, 2, 3] and [j.prompt for j in jobs] == [0, 0, 1, 1]
    assert [j.params.seed for j in jobs] == [MAX_SEED, 0, MAX_SEED, 0]
    greedy = expand_choices([([1], "a")], None, GenerationParams(max_new_tokens=4, seed=5), 3)
    assert {j.params.seed for j in greedy} == {5}


def test_legacy_logprobs_offsets_follow_the_token_texts() -> None:
    tokens = [TokenLogprob(1, "Hel", None), TokenLogprob(2, "lo", -0.5, {"lo": -0.5, "p": -2.0})]
    shaped = completion_logprobs(tokens, first_offset=4)
    assert shaped == {
        "tokens": ["Hel", "lo"],
        "token_logprobs": [None, -0.5],
        "top_logprobs": [None, {"lo": -0.5, "p": -2.0}],
        "text_offset": [4, 7],
    }


def test_promotion_hand_off_sends_the_key_the_server_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """output.notify_server carries SMOLTUNE_API_KEY: the variable is the one `smoltune serve` reads."""
    import httpx

    from smoltune.pipeline import registry
    from smoltune.serve.auth import API_KEY_ENV

    assert registry.SERVE_API_KEY_ENV == API_KEY_ENV
    sent: dict = {}

    def post(url: str, **kwargs: object) -> httpx.Response:
        sent.update(kwargs)
        return httpx.Response(200, text="ok")

    monkeypatch.setattr(httpx, "post", post)
    monkeypatch.setenv(API_KEY_ENV, "k3y")
    assert "answered 200" in registry.notify_server("http://127.0.0.1:1", "run", "/a")
    assert sent["headers"] == {"Authorization": "Bearer k3y"}
