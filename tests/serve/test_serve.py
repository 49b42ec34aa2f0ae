"""`smoltune serve` with real parts: the server in its own process on 127.0.0.1, the real `openai` client, two
adapters trained on the tiny model to answer differently, many interleaved concurrent requests each matched
to its adapter's own greedy answer, streaming, hot reload and the error shapes. Stopped by PID."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from smoltune.config import DataConfig, TrainConfig
from smoltune.data.prompts import format_prompt
from smoltune.data.stage import prepare_dataset
from smoltune.files import write_jsonl
from smoltune.train.runner import train_in_subprocess
from smoltune.train.spec import TrainSpec
from tests.serve.cli_server import cli_server

QUESTIONS = ["Is 7 odd or even?", "Add the two numbers.", "Say hi.", "Name a colour."]


def train_adapter(model_dir: Path, work: Path, answer: str) -> str:
    """An adapter that answers `answer` to everything (a high learning rate on a tiny model)."""
    rows = [{"instruction": f"Question {i}: {q}", "input": "", "output": answer} for i in range(12) for q in QUESTIONS]
    folder = work / answer
    prepared = prepare_dataset(
        write_jsonl(work / f"{answer}.jsonl", rows), DataConfig(num_samples=40, eval_samples=4), folder
    )
    config = TrainConfig(
        max_steps=40, learning_rate=1e-2, warmup_steps=0, batch_size=4, grad_accum=1, max_seq_length=128
    )
    result = train_in_subprocess(
        TrainSpec(str(model_dir), prepared.train_file, str(folder / "train"), config.model_dump(mode="json"))
    )
    return result.output_dir


def greedy(model_dir: Path, adapter_dir: str, instruction: str, max_new_tokens: int) -> str:
    """The adapter's own answer, one request alone, plain PEFT: what every server answer must equal."""
    from peft import PeftModel

    from smoltune.model import load_model_and_tokenizer

    base, tokenizer = load_model_and_tokenizer(str(model_dir), "cpu")
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    prompt = format_prompt({"instruction": instruction, "input": ""}, "alpaca")
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.fixture(scope="module")
def adapter_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, adapter_root: Path) -> dict[str, str]:
    work = adapter_root
    return {name: train_adapter(tiny_model_dir, work, name) for name in ("odd", "even")}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, adapters: dict[str, str], adapter_root: Path) -> Iterator[str]:
    args = ["--base", str(tiny_model_dir), "--allow-adapter-loading", "--adapter-root", str(adapter_root)]
    args += [arg for name, path in adapters.items() for arg in ("--adapter", f"{name}={path}")]
    with cli_server(args, adapter_root / "server.log") as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(server: str):  # noqa: ANN201
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key="not-needed", max_retries=0, timeout=120)


def test_models_lists_the_base_and_every_adapter(client, tiny_model_dir: Path) -> None:  # noqa: ANN001
    assert {m.id for m in client.models.list()} == {tiny_model_dir.name, "odd", "even"}


def test_each_adapter_answers_as_itself(client, tiny_model_dir: Path, adapters: dict[str, str]) -> None:  # noqa: ANN001
    answers = {}
    for name, path in adapters.items():
        expected = greedy(tiny_model_dir, path, QUESTIONS[0], 6)
        reply = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": QUESTIONS[0]}], max_tokens=6, temperature=0
        )
        assert reply.choices[0].message.content == expected
        assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 0
        answers[name] = expected
    assert answers["odd"] != answers["even"] and answers["odd"].startswith("odd")


def test_streamed_chunks_join_to_the_same_text(client, tiny_model_dir: Path, adapters: dict[str, str]) -> None:  # noqa: ANN001
    expected = greedy(tiny_model_dir, adapters["even"], QUESTIONS[1], 6)
    stream = client.chat.completions.create(
        model="even", messages=[{"role": "user", "content": QUESTIONS[1]}], max_tokens=6, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason in ("stop", "length") and len(chunks) > 2


def test_interleaved_concurrent_requests_never_see_another_adapter(
    client,
    tiny_model_dir: Path,
    adapters: dict[str, str],  # noqa: ANN001
) -> None:
    expected = {(name, q): greedy(tiny_model_dir, path, q, 5) for name, path in adapters.items() for q in QUESTIONS}
    jobs = [(["odd", "even"][i % 2], QUESTIONS[i % len(QUESTIONS)]) for i in range(16)]

    def ask(job: tuple[str, str]) -> str:
        reply = client.completions.create(
            model=job[0], prompt=format_prompt({"instruction": job[1], "input": ""}, "alpaca"), max_tokens=5
        )
        return reply.choices[0].text

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(ask, jobs))
    assert answers == [expected[job] for job in jobs]


def test_errors_come_in_openai_shape(client, server: str) -> None:  # noqa: ANN001
    import openai

    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="odd", messages=[{"role": "user", "content": "hi"}], max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="exceeds the model's 1024 positions"):
        client.completions.create(model="odd", prompt="word " * 1500, max_tokens=4)
    body = httpx.post(f"{server}/v1/chat/completions", json={"model": "odd"}).json()
    assert set(body["error"]) == {"message", "type", "param", "code"} and "Traceback" not in str(body)


def test_an_adapter_is_attached_without_a_restart(client, server: str, adapters: dict[str, str]) -> None:  # noqa: ANN001
    assert httpx.post(f"{server}/v1/adapters", json={"name": "nope", "path": "http://x/y"}).status_code == 403
    added = httpx.post(f"{server}/v1/adapters", json={"name": "odd-again", "path": adapters["odd"]}, timeout=60)
    assert added.status_code == 200, added.text
    ask = {"messages": [{"role": "user", "content": QUESTIONS[2]}], "max_tokens": 5}
    same = [client.chat.completions.create(model=m, **ask).choices[0].message.content for m in ("odd", "odd-again")]
    assert same[0] == same[1]


def test_the_promotion_hand_off_attaches_the_adapter(client, server: str, adapters: dict[str, str]) -> None:  # noqa: ANN001
    from smoltune.pipeline.registry import notify_server

    assert "answered 200" in notify_server(server, "promoted-run", adapters["even"])
    assert "promoted-run" in {m.id for m in client.models.list()}
    assert "could not reach" in notify_server("http://127.0.0.1:9", "x", adapters["even"], timeout_s=2)


def test_registry_entries_become_adapters_named_after_their_run(tmp_path: Path, adapters: dict[str, str]) -> None:
    import json

    from smoltune.errors import ConfigError
    from smoltune.serve.engine import registry_adapters

    registry = tmp_path / "registry.json"
    entries = {"k1": {"run": "r1", "output_dir": adapters["odd"]}, "k2": {"run": "r2", "output_dir": "/gone"}}
    registry.write_text(json.dumps(entries))
    assert registry_adapters(registry) == {"r1": adapters["odd"]}  # a deleted adapter is skipped, not served
    with pytest.raises(ConfigError, match="no such file"):
        registry_adapters(tmp_path / "absent.json")
