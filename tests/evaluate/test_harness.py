"""lm-evaluation-harness inside the evaluate stage, on the tiny random llama with a LoRA adapter made without
training: every metric lands in the record with its standard error, the tuned figures are the ones lm-eval's own
`hf` model with `peft=` gives, the base's run kept apart (as the pipeline caches it) gives the same figures, and a
task that cannot load is one ConfigError. The task data is written by the
test (tests/evaluate/harness_tasks.py); nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from smoltune.config import HarnessConfig
from smoltune.errors import ConfigError
from smoltune.evaluate.harness import measure_harness, measure_harness_base, model_args, run_harness
from smoltune.records import EvalFigures, TrainResult
from tests.evaluate.harness_tasks import write_task_folder

LIMIT = 4


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with random (non-zero) weights, so the tuned model differs from the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    target = tmp_path_factory.mktemp("adapter")
    get_peft_model(base, config).save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_task_folder(tmp_path_factory.mktemp("harness-tasks"))


@pytest.fixture(scope="module")
def measured(tiny_model_dir: Path, adapter_dir: Path, task_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tasks = ["tiny_gen", "tiny_mc", "tiny_ll"]
    harness = HarnessConfig(tasks=tasks, include_path=str(task_dir), limit=LIMIT, batch_size=2)
    models = model_args(str(tiny_model_dir), str(adapter_dir), "lora", "fp32")
    return harness, models, run_harness(harness, models, "cpu", tmp_path_factory.mktemp("evaluate"))


# The child process imports torch, transformers and lm-eval afresh: about 40 s on two busy cores.
@pytest.mark.slow
def test_every_metric_lands_in_the_record_with_stderr(measured) -> None:
    _, _, figures = measured
    assert {(s.task, s.metric) for s in figures.scores} == {
        ("tiny_gen", "exact_match"), ("tiny_mc", "acc"), ("tiny_ll", "perplexity")
    }  # fmt: skip
    for score in figures.scores:
        assert score.base is not None and score.tuned is not None
        assert score.base_stderr is not None and score.tuned_stderr is not None
        assert score.samples == LIMIT
        assert score.higher_is_better is (score.metric != "perplexity")
    perplexity = figures.score("tiny_ll", "perplexity")
    assert perplexity.tuned != perplexity.base  # the adapter was loaded
    assert "peft=" in figures.commands["tuned"] and "peft=" not in figures.commands["base"]
    record = EvalFigures(
        eval_rows=1, eval_loss_base=1, eval_loss_tuned=1, perplexity_base=1, perplexity_tuned=1, checked_rows=0,
        harness=figures,
    )  # fmt: skip
    assert EvalFigures.model_validate_json(record.model_dump_json()).harness == figures


@pytest.mark.slow
def test_tuned_figures_equal_lm_evals_own_peft_model(measured) -> None:
    """The same task, limit and model arguments through lm-eval's `simple_evaluate` in this process."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    harness, models, figures = measured
    direct = {}
    for label in ("base", "tuned"):
        got = simple_evaluate(
            model="hf", model_args=models[label], tasks=["tiny_mc", "tiny_ll"], limit=LIMIT, batch_size=2,
            device="cpu", task_manager=TaskManager(include_path=harness.include_path, include_defaults=False),
            log_samples=False,
        )  # fmt: skip
        direct[label] = got["results"]
    for task, metric in (("tiny_mc", "acc"), ("tiny_ll", "perplexity")):
        score = figures.score(task, metric)
        for label in ("base", "tuned"):
            ours = (getattr(score, label), getattr(score, f"{label}_stderr"))
            assert ours == (direct[label][task][f"{metric},none"], direct[label][task][f"{metric}_stderr,none"])


@pytest.mark.slow
def test_the_base_run_apart_gives_the_same_figures(
    measured, tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    """The evaluate_base stage runs the harness on the base alone; the evaluate stage then on the tuned model."""
    harness, _, together = measured
    numbers = dict.fromkeys(["trainable_params", "total_params", "steps", "tokens_seen", "saved_mb"], 1)
    trained = TrainResult(
        backend="hf", backend_reason="", mode="lora", lora_rank=4, device="cpu", train_seconds=1.0,
        tokens_per_second=1.0, peak_memory_mb=1.0, losses=[1.0], step_log=[], output_dir=str(adapter_dir), **numbers,
    )  # fmt: skip
    (tmp_path / "base").mkdir()
    (tmp_path / "tuned").mkdir()
    base_run = measure_harness_base(harness, str(tiny_model_dir), "fp32", False, tmp_path / "base")
    assert set(base_run["results"]) == {"base"}  # the base's run alone, as base.json keeps it
    apart = measure_harness(harness, str(tiny_model_dir), trained, False, tmp_path / "tuned", base_run)
    assert apart.scores == together.scores and apart.commands == together.commands


def test_a_task_that_cannot_load_is_one_config_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The data file vanished after the config was checked: the harness's own failure, as one line."""
    folder = write_task_folder(tmp_path / "tasks")
    (folder / "rows.jsonl").unlink()
    harness = HarnessConfig(tasks=["tiny_mc"], include_path=str(folder), limit=1)
    models = {"base": model_args(str(tiny_model_dir), "", "full", "fp32")["base"]}
    with pytest.raises(ConfigError) as caught:
        run_harness(harness, models, "cpu", tmp_path)
    (problem,) = caught.value.problems
    assert "tiny_mc" in problem and "cannot be loaded" in problem and "\n" not in problem
