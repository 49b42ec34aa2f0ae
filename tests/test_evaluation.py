"""Evaluation on the tiny model: finite losses for base and tuned, one answer per prompt."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from smoltune.builtin_data import generate_rows
from smoltune.config import TrainConfig
from smoltune.data import prepare_dataset
from smoltune.evaluation import EvalPromptsError, evaluate_adapter, load_eval_prompts
from smoltune.files import write_jsonl
from smoltune.training import train_lora


def test_shipped_eval_prompts_are_varied() -> None:
    prompts = load_eval_prompts("configs/eval_prompts.yaml")
    assert len(prompts) >= 8
    assert len({p["instruction"] for p in prompts}) == len(prompts)
    assert any(p["input"] for p in prompts) and any(not p["input"] for p in prompts)


def test_malformed_prompts_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("prompts:\n  - input: no instruction\n")
    with pytest.raises(EvalPromptsError, match="prompt 1 needs a non-empty 'instruction'"):
        load_eval_prompts(path)
    with pytest.raises(EvalPromptsError, match="cannot read"):
        load_eval_prompts(tmp_path / "absent.yaml")


def test_evaluate_adapter_base_vs_tuned(tiny_model_dir: Path, tmp_path: Path) -> None:
    raw = write_jsonl(tmp_path / "raw.jsonl", generate_rows(60, seed=4))
    prepared = prepare_dataset(raw, num_samples=16, eval_samples=6, seed=0, out_dir=tmp_path)
    config = TrainConfig(max_steps=2, warmup_steps=0, batch_size=2, grad_accum=1, learning_rate=1e-2)
    trained = train_lora(str(tiny_model_dir), prepared["train_file"], str(tmp_path / "out"), config)
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("prompts:\n  - instruction: Add the two numbers.\n    input: 1 and 2\n  - Say hi.\n")
    result = evaluate_adapter(str(tiny_model_dir), trained.adapter_dir, prepared["eval_file"], str(prompts), 5, 4, 256)
    assert result["eval_rows"] == 6
    assert math.isfinite(result["eval_loss_base"]) and math.isfinite(result["eval_loss_tuned"])
    # A large learning rate on a random model must move the held-out loss: base and tuned really differ.
    assert result["eval_loss_base"] != result["eval_loss_tuned"]
    assert [g["instruction"] for g in result["generations"]] == ["Add the two numbers.", "Say hi."]
    assert all(isinstance(g["base"], str) and isinstance(g["tuned"], str) for g in result["generations"])
