"""Records of a finished run, built without training: a real LoRA adapter saved from the tiny llama (random
weights), a step log, held-out figures and a run folder holding what the report task writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smoltune.config import PipelineConfig, load_config
from smoltune.records import EvalFigures, PromotionDecision, TrainResult

STEPS = 6


@pytest.fixture(scope="session")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    target = tmp_path_factory.mktemp("adapter")
    get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])).save_pretrained(target)
    return target


def train_result(output_dir: Path, mode: str = "lora") -> TrainResult:
    """A finished training's record: a falling loss, a warm-up then decaying learning rate, a NaN grad norm at
    step 1 (the trainer's way of saying it did not track one)."""
    step_log = [
        {
            "step": step,
            "loss": 2.5 - 0.2 * step,
            "learning_rate": 2e-4 * min(step, 2) / 2 * (1 - step / (STEPS + 1)),
            "grad_norm": float("nan") if step == 1 else 1.0 / step,
            "tokens_seen": 100 * step,
        }
        for step in range(1, STEPS + 1)
    ]
    return TrainResult(
        backend="hf", backend_reason="test", mode=mode, lora_rank=4, device="cpu", trainable_params=1000,
        total_params=100000, steps=STEPS, train_seconds=3.0, tokens_seen=100 * STEPS, tokens_per_second=200.0,
        peak_memory_mb=300.0, losses=[s["loss"] for s in step_log], step_log=step_log, output_dir=str(output_dir),
        saved_mb=0.1,
    )  # fmt: skip


def eval_figures(tuned_loss: float = 1.5) -> EvalFigures:
    return EvalFigures(
        eval_rows=10, eval_loss_base=2.0, eval_loss_tuned=tuned_loss, perplexity_base=7.4, perplexity_tuned=4.5,
        checked_rows=10, accuracy_base=0.1, accuracy_tuned=0.6,
        accuracy_by_family={"arithmetic": {"base": 0.0, "tuned": 0.5}},
    )  # fmt: skip


def promotion(promoted: bool) -> PromotionDecision:
    return PromotionDecision(
        promoted=promoted, key="k", metric="accuracy_tuned", value=0.6, reason="first run for these held-out rows"
    )


def job(runs_dir: Path, *overrides: str) -> PipelineConfig:
    """The seed job with a data URL that carries a token (which must never reach MLflow)."""
    secret_source = "data.source=https://data.example/rows.jsonl?token=s3cr3t"
    return load_config(None, [f"output.runs_dir={runs_dir}", secret_source, *overrides])


def run_folder(path: Path, name: str = "20261202-000000-abcdef") -> Path:
    """A run folder as the report task leaves it."""
    from smoltune.report.plots import loss_curve_png

    folder = path / name
    folder.mkdir(parents=True)
    (folder / "report.md").write_text("# smoltune run\n")
    (folder / "report.html").write_text("<h1>smoltune run</h1>\n")
    (folder / "loss_curve.png").write_bytes(loss_curve_png({name: [2.3, 2.1, 1.9]}))
    (folder / "summary.json").write_text(json.dumps({"run_name": name}))
    (folder / "config.yaml").write_text("train: {}\n")
    return folder
