"""Evaluation on the tiny model: finite losses for base and tuned, one answer per prompt; the base and the tuned
model measured apart (as the pipeline caches the base) give exactly the figures of both measured together."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from smoltune.config import DataConfig, EvalConfig, TrainConfig
from smoltune.data.builtin import generate_rows
from smoltune.data.stage import prepare_dataset
from smoltune.evaluate.prompts import EvalPromptsError, load_eval_prompts
from smoltune.evaluate.scoring import score_answers
from smoltune.evaluate.stage import EvalRequest, combine_figures, evaluate_tuned, measure_base, measure_tuned
from smoltune.files import read_jsonl, write_jsonl
from smoltune.train.runner import train_in_subprocess
from smoltune.train.spec import TrainSpec


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


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_evaluate_adapter_base_vs_tuned(tiny_model_dir: Path, tmp_path: Path, mode: str) -> None:
    raw = write_jsonl(tmp_path / "raw.jsonl", generate_rows(60, seed=4))
    prepared = prepare_dataset(raw, DataConfig(num_samples=16, eval_samples=6, seed=0), tmp_path)
    config = TrainConfig(max_steps=2, warmup_steps=0, batch_size=2, grad_accum=1, learning_rate=1e-2, mode=mode)
    spec = TrainSpec(str(tiny_model_dir), prepared.train_file, str(tmp_path / "out"), config.model_dump())
    trained = train_in_subprocess(spec)
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("prompts:\n  - instruction: Add the two numbers.\n    input: 1 and 2\n  - Say hi.\n")
    ev = EvalConfig(prompts_file=str(prompts), max_new_tokens=5, answer_max_new_tokens=3, batch_size=4)
    request = EvalRequest(str(tiny_model_dir), trained.output_dir, mode, prepared.eval_file, ev, "alpaca", 256)
    figures, answers, generations = evaluate_tuned(request)
    assert figures.eval_rows == 6
    assert math.isfinite(figures.eval_loss_base) and math.isfinite(figures.eval_loss_tuned)
    # A large learning rate on a random model must move the held-out loss: base and tuned really differ.
    assert figures.eval_loss_base != figures.eval_loss_tuned
    assert [g["instruction"] for g in generations] == ["Add the two numbers.", "Say hi."]
    assert all(isinstance(g["base"], str) and isinstance(g["tuned"], str) for g in generations)
    checkable = [r for r in read_jsonl(prepared.eval_file) if r["check"] != "open"]
    assert figures.checked_rows == len(checkable) > 0 and len(answers) == 6
    for name in ("accuracy", "exact_match", "normalised_match", "rouge_l"):
        assert 0 <= getattr(figures, f"{name}_base") <= 1 and 0 <= getattr(figures, f"{name}_tuned") <= 1

    # Measured apart, as the pipeline does (the base alone, cached; then the tuned model alone): the same figures,
    # answers and generations as with one model in memory and the adapter switched off (full: the base beside it).
    base = measure_base(str(tiny_model_dir), prepared.eval_file, ev, "alpaca", 256)
    tuned, data = measure_tuned(request)
    split, split_answers, split_generations = combine_figures(base, tuned, data, "fp32")
    assert split.model_dump(exclude={"eval_seconds"}) == figures.model_dump(exclude={"eval_seconds"})
    assert split_answers == answers and split_generations == generations


def test_score_answers_by_family() -> None:
    rows = [
        {"family": "addition", "output": "5", "check": "exact"},
        {"family": "addition", "output": "7", "check": "exact"},
        {"family": "parity", "output": "odd", "check": "normalised"},
        {"family": "describe", "output": "A fox.", "check": "open"},
    ]
    score = score_answers(rows, ["5", "The answer is 7", "Odd.", "A fox."])
    assert score["accuracy"] == round(2 / 3, 4) and score["checked_rows"] == 3
    assert score["by_family"] == {"addition": 0.5, "parity": 1.0}
    assert score["exact_match"] == 0.5  # "5" and "A fox." match exactly; "Odd." only after normalising
    assert score["normalised_match"] == 0.75
    assert score["rouge_l"] == round((1 + 0.4 + 1 + 1) / 4, 4)  # "The answer is 7" vs "7": P=1/4, R=1, F1=0.4
    open_only = score_answers(rows[3:], ["x"])
    assert open_only["accuracy"] is None and open_only["checked_rows"] == 0 and open_only["rouge_l"] == 0.0
