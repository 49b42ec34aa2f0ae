"""End to end through the CLI on the real embedded SmolLM2-135M-Instruct, with configs/smoke.yaml."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow

SUMMARY_FIELDS = [
    "model.source",
    "model.sha256",
    "data.train_rows",
    "data.eval_rows",
    "validation.success",
    "train.backend",
    "train.mode",
    "train.lora_rank",
    "train.trainable_params",
    "train.total_params",
    "train.steps",
    "train.train_seconds",
    "train.tokens_per_second",
    "train.peak_memory_mb",
    "train.losses",
    "eval.eval_loss_base",
    "eval.eval_loss_tuned",
    "artifacts.adapter_dir",
    "artifacts.adapter_mb",
]


def lookup(data: dict, dotted: str):
    for part in dotted.split("."):
        data = data[part]
    return data


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    cli = Path(sys.executable).parent / "smoltune"
    done = subprocess.run(
        [str(cli), "run", "--config", "configs/smoke.yaml", "--set", f"output.runs_dir={runs}"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    last_line = done.stdout.strip().splitlines()[-1]
    assert Path(last_line).parent == runs
    return Path(last_line)


def test_summary_has_every_field(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    for field in SUMMARY_FIELDS:
        lookup(summary, field)  # raises KeyError when missing
    assert summary["model"]["source"] == "embedded" and len(summary["model"]["sha256"]) == 64
    assert summary["validation"]["success"] is True
    train = summary["train"]
    auto_backend = "hf" if train["device"] == "cpu" else "unsloth"  # smoltune.train.trainer.resolve_backend
    assert (train["backend"], train["mode"], train["lora_rank"], train["steps"]) == (auto_backend, "lora", 16, 2)
    assert train["trainable_params"] == 4_884_480  # r=16 on the 7 projections of SmolLM2-135M
    assert train["total_params"] == 134_515_008 + 4_884_480
    assert len(train["losses"]) == 2 and all(math.isfinite(x) for x in train["losses"])
    assert math.isfinite(summary["eval"]["eval_loss_base"]) and math.isfinite(summary["eval"]["eval_loss_tuned"])
    assert (summary["data"]["train_rows"], summary["data"]["eval_rows"]) == (16, 8)
    assert summary["eval"]["checked_rows"] > 0 and 0 <= summary["eval"]["accuracy_tuned"] <= 1
    assert "dequantised Q4_1" in (run_dir / "report.md").read_text()
    assert Path(summary["validation"]["data_docs"]).is_file()


def test_adapter_loads_and_moved_from_init(run_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    summary = json.loads((run_dir / "summary.json").read_text())
    adapter_dir = summary["artifacts"]["adapter_dir"]
    # The adapter names the hub base (loadable on any machine, and by vLLM), not this machine's cache folder.
    base_id = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(summary["model"]["path"]), adapter_dir)
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert len(lora_b) == 30 * 7
    assert sum(p.abs().sum().item() for p in lora_b) > 0  # B is initialised to zero


def test_generations_are_side_by_side(run_dir: Path) -> None:
    generations = json.loads((run_dir / "generations.json").read_text())
    assert len(generations) >= 8
    assert all({"instruction", "input", "base", "tuned"} <= set(g) for g in generations)


def test_serve_answers_like_chat(run_dir: Path) -> None:
    """The real server on the real run: its greedy answer is `smoltune chat`'s, through the openai client."""
    import os
    import signal
    import time

    import httpx
    from openai import OpenAI

    cli = str(Path(sys.executable).parent / "smoltune")
    prompt = "Add the two numbers: 3 and 4"
    chat = subprocess.run(
        [cli, "chat", str(run_dir), "--prompt", prompt, "--max-new-tokens", "12"], capture_output=True, text=True
    )
    assert chat.returncode == 0, chat.stderr[-2000:]
    port = free_port()
    server = subprocess.Popen(
        [cli, "serve", "--adapter", f"tuned={run_dir}", "--port", str(port)], start_new_session=True
    )
    try:
        for _ in range(240):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=300)
        reply = client.chat.completions.create(
            model="tuned", messages=[{"role": "user", "content": prompt}], max_tokens=12, temperature=0
        )
        assert reply.choices[0].message.content.strip() == chat.stdout.strip()
        assert {m.id for m in client.models.list()} == {"SmolLM2-135M-Instruct", "tuned"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
