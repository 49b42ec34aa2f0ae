"""Training on the tiny random llama: metrics recorded, adapter saved as safetensors and loadable."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from smoltune.builtin_data import generate_rows
from smoltune.config import DataConfig, TrainConfig
from smoltune.data import prepare_dataset, to_prompt_completion
from smoltune.files import write_jsonl
from smoltune.tokens import IGNORE_INDEX, tokenize_example
from smoltune.training import TrainResult, train_lora


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("prepared")
    raw = write_jsonl(folder / "raw.jsonl", generate_rows(80, seed=2))
    return prepare_dataset(raw, DataConfig(num_samples=32, eval_samples=8, seed=0), folder)


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, prepared: dict, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    config = TrainConfig(max_steps=3, warmup_steps=1, batch_size=2, grad_accum=2, max_seq_length=256)
    return train_lora(str(tiny_model_dir), prepared["train_file"], str(tmp_path_factory.mktemp("out")), config)


def test_prompt_tokens_are_masked_and_eos_appended(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    row = to_prompt_completion({"instruction": "Add the two numbers.", "input": "1 and 2", "output": "3"})
    prompt_len = len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
    masked = tokenize_example(tokenizer, row["prompt"], row["completion"], 512, mask_prompt=True)
    assert masked["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert masked["labels"][prompt_len:] == masked["input_ids"][prompt_len:]
    assert masked["input_ids"][-1] == tokenizer.eos_token_id
    unmasked = tokenize_example(tokenizer, row["prompt"], row["completion"], 512, mask_prompt=False)
    assert unmasked["labels"] == unmasked["input_ids"]
    assert len(tokenize_example(tokenizer, row["prompt"], row["completion"], 10, True)["input_ids"]) == 10


def test_training_records_the_figures(trained: TrainResult) -> None:
    assert trained.steps == 3 and len(trained.losses) == 3
    assert all(math.isfinite(loss) for loss in trained.losses)
    assert trained.tokens_seen > 0 and trained.tokens_per_second > 0
    assert trained.train_seconds > 0 and trained.peak_memory_mb > 100
    assert [s["step"] for s in trained.step_log] == [1, 2, 3]
    assert trained.step_log[-1]["tokens_seen"] == trained.tokens_seen
    assert trained.settings["gradient_checkpointing"] is False and trained.settings["bf16"] is False


def test_trainable_parameters_match_the_lora_formula(trained: TrainResult) -> None:
    # hidden 64, intermediate 128, 4 heads x 16 = 64 for q/o, 2 kv heads x 16 = 32 for k/v; r = 16
    r, h, i, kv = 16, 64, 128, 32
    per_layer = r * ((h + h) + (h + kv) * 2 + (h + h) + (h + i) * 2 + (i + h))
    assert trained.trainable_params == 2 * per_layer
    assert trained.total_params > trained.trainable_params
    assert 0 < trained.trainable_percent < 100


def test_adapter_is_safetensors_and_loads_with_peft(trained: TrainResult, tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    files = {p.name for p in Path(trained.adapter_dir).iterdir()}
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), trained.adapter_dir)
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert len(lora_b) == 2 * 7
    # LoRA B starts at zero: any non-zero value means training moved the adapter.
    assert any(p.abs().sum().item() > 0 for p in lora_b)
    assert trained.adapter_mb > 0
