"""`smoltune serve` in its own process on 127.0.0.1 with the real engine, the tiny random llama of
tests/tiny_model.py (a local stand-in for a hub model: no downloads) and an adapter made without training (random
LoRA weights, so it answers unlike the base), behind an API key. Real clients: lm-evaluation-harness's
`local-completions` scoring a multiple-choice task of our own through the server must give the per-choice
log-likelihoods of the harness's own `hf` model loading base + adapter with PEFT; `local-chat-completions` runs a
generation task; the `openai` client reads completion and chat log-probs; the hang cases each leave the server
answering; SIGTERM drains and exits 0. Stopped by PID."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serve.cli_server import cli_server

KEY = "sk-real-clients"
AUTH = {"authorization": f"Bearer {KEY}"}
ROWS = [
    {"question": "Is 7 odd or even? Answer:", "choices": [" odd", " even"], "answer": 0},
    {"question": "Add the two numbers 3 and 4. Answer:", "choices": [" 7", " 8", " 12"], "answer": 0},
    {"question": "Name a colour. Answer:", "choices": [" red", " table"], "answer": 0},
]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LoRA weights drawn at random (init_lora_weights=False): the adapter changes every log-prob, no training."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    folder = tmp_path_factory.mktemp("adapters") / "random"
    get_peft_model(base, config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def served(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    args = ["--base", str(tiny_model_dir), "--adapter", f"tuned={adapter_dir}", "--request-timeout", "60"]
    log = tmp_path_factory.mktemp("server") / "server.log"
    with cli_server(args, log, {"SMOLTUNE_API_KEY": KEY}) as (url, proc):
        yield url, proc, log


@pytest.fixture(scope="module")
def server(served: tuple[str, subprocess.Popen, Path]) -> str:
    return served[0]


def write_task(folder: Path, name: str, rows: list[dict], yaml_body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    head = f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (folder / f"{name}.yaml").write_text(head + yaml_body)
    return folder


MC_TASK = """output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
"""


def choice_loglikelihoods(lm: object, tasks_dir: Path, name: str) -> list[float]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(
        model=lm, tasks=[name], task_manager=TaskManager(include_path=str(tasks_dir)), log_samples=True
    )
    samples = sorted(results["samples"][name], key=lambda s: s["doc_id"])
    return [float(resp[0][0]) for sample in samples for resp in sample["resps"]]


@pytest.mark.slow  # about 2 minutes on 2 cores: the harness loads the model twice and runs its task pipeline
def test_lm_eval_local_completions_scores_as_the_harness_hf_model_with_peft(
    server: str, tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lm_eval.models.huggingface import HFLM
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    tasks = write_task(tmp_path / "tasks", "smoltune_mc", ROWS, MC_TASK)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # local-completions sends it as the Bearer token
    remote = LocalCompletionsAPI(
        base_url=f"{server}/v1/completions", model="tuned", tokenizer_backend="huggingface",
        tokenizer=str(tiny_model_dir), max_length=1024,
    )  # fmt: skip
    through_server = choice_loglikelihoods(remote, tasks, "smoltune_mc")
    local = HFLM(pretrained=str(tiny_model_dir), peft=str(adapter_dir), dtype="float32", device="cpu", batch_size=1)
    in_harness = choice_loglikelihoods(local, tasks, "smoltune_mc")
    base = HFLM(pretrained=str(tiny_model_dir), dtype="float32", device="cpu", batch_size=1)
    base_only = choice_loglikelihoods(base, tasks, "smoltune_mc")
    assert len(through_server) == sum(len(r["choices"]) for r in ROWS)
    assert through_server == pytest.approx(in_harness, abs=1e-2)
    assert max(abs(a - b) for a, b in zip(in_harness, base_only, strict=True)) > 0.05  # the adapter was applied


@pytest.mark.slow
def test_lm_eval_local_chat_completions_runs_a_generation_task(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.models.openai_completions import LocalChatCompletion
    from lm_eval.tasks import TaskManager

    rows = [{"question": r["question"], "answer": r["choices"][0]} for r in ROWS]
    body = 'output_type: generate_until\ndoc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
    body += "generation_kwargs:\n  until: ['\\n\\n']\n  max_gen_toks: 6\nmetric_list:\n  - metric: exact_match\n"
    tasks = write_task(tmp_path / "gen", "smoltune_gen", rows, body)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    lm = LocalChatCompletion(base_url=f"{server}/v1/chat/completions", model="tuned")
    results = simple_evaluate(
        model=lm, tasks=["smoltune_gen"], task_manager=TaskManager(include_path=str(tasks)), log_samples=True,
        apply_chat_template=True,
    )  # fmt: skip
    answers = [s["resps"][0][0] for s in sorted(results["samples"]["smoltune_gen"], key=lambda s: s["doc_id"])]
    direct = [chat(server, r["question"], max_tokens=6, stop=["\n\n"]) for r in rows]
    assert answers == direct and all(answers)
    assert "exact_match,none" in results["results"]["smoltune_gen"]


def chat(server: str, content: str, **fields: object) -> str:
    body = {"model": "tuned", "messages": [{"role": "user", "content": content}], **fields}
    reply = httpx.post(f"{server}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["message"]["content"]


def test_openai_client_reads_completion_and_chat_logprobs(server: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)
    scored = client.completions.create(model="tuned", prompt="Is 7 odd", max_tokens=0, echo=True, logprobs=1)
    lp = scored.choices[0].logprobs
    assert scored.choices[0].text == "Is 7 odd" and lp.token_logprobs[0] is None
    assert all(v < 0 for v in lp.token_logprobs[1:]) and "".join(lp.tokens) == "Is 7 odd"
    reply = client.chat.completions.create(
        model="tuned", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4, logprobs=True, top_logprobs=2,
        n=2, stop=["\n"],
    )  # fmt: skip
    assert reply.choices[0].message.content == reply.choices[1].message.content  # greedy: n equal choices
    assert all(len(t.top_logprobs) == 2 for t in reply.choices[0].logprobs.content)


def test_hang_cases_leave_the_server_answering(server: str) -> None:
    def complete(**fields: object) -> httpx.Response:
        body = {"model": "tuned", "prompt": "Say hi.", "max_tokens": 4, **fields}
        return httpx.post(f"{server}/v1/completions", json=body, headers=AUTH, timeout=60)

    greedy = complete().json()["choices"][0]["text"]
    for fields, status in [({"seed": 2**70, "temperature": 1}, 400), ({"top_p": 0, "temperature": 1}, 400)]:
        assert complete(**fields).status_code == status
        assert httpx.get(f"{server}/health").status_code == 200 and complete().status_code == 200
    assert complete(temperature=1e-45).json()["choices"][0]["text"] == greedy
    body = {"model": "tuned", "prompt": "Say hi.", "max_tokens": 200, "stream": True, "stop": ["never-seen"]}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, headers=AUTH, timeout=60) as reply:
        assert next(reply.iter_lines()).startswith("data: ")  # then the client goes away mid-stream
    assert complete().json()["choices"][0]["text"] == greedy
    metrics = httpx.get(f"{server}/metrics").text
    assert 'smoltune_generation_tokens_total{model="tuned"}' in metrics and "smoltune_batch_size_count" in metrics
    # The same prompt each time: after the first, all but its last token came from the prefix cache, and the
    # greedy answers above were the same.
    cached = [line for line in metrics.splitlines() if line.startswith("smoltune_prompt_tokens_cached_total ")]
    assert float(cached[0].split()[1]) > 0


def test_sigterm_drains_and_exits_zero(served: tuple[str, subprocess.Popen, Path]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    url, proc, log = served
    body = {"model": "tuned", "prompt": "Say hi.", "max_tokens": 300, "stop": ["never-seen"]}
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(httpx.post, f"{url}/v1/completions", json=body, headers=AUTH, timeout=60)
        deadline = time.monotonic() + 30
        while "smoltune_requests_in_flight 1.0" not in httpx.get(f"{url}/metrics").text:
            assert time.monotonic() < deadline and not in_flight.done()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        reply = in_flight.result()
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] > 0  # finished, not cut off
    assert proc.wait(timeout=60) == 0
    assert "drained" in log.read_text()
