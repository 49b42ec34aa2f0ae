"""Prefect task: held-out eval loss and prompt generations, base vs tuned."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from smoltune.config import EvalConfig, ModelConfig, TrainConfig
from smoltune.evaluation import evaluate_adapter
from smoltune.files import atomic_write_json


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(
    model: dict,
    model_config: ModelConfig,
    trained: dict,
    prepared: dict,
    ev: EvalConfig,
    train: TrainConfig,
    run_dir: str,
) -> dict:
    result = evaluate_adapter(
        model["path"],
        trained["adapter_dir"],
        prepared["eval_file"],
        ev.prompts_file,
        ev.max_new_tokens,
        ev.batch_size,
        train.max_seq_length,
        model_config.trust_remote_code,
    )
    atomic_write_json(Path(run_dir) / "generations.json", result["generations"])
    get_run_logger().info("eval loss base %.4f -> tuned %.4f", result["eval_loss_base"], result["eval_loss_tuned"])
    return result
