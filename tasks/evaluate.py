"""Prefect task: held-out eval loss, accuracy and prompt generations, base vs tuned."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from smoltune.config import PipelineConfig
from smoltune.evaluation import evaluate_tuned
from smoltune.files import atomic_write_json


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(model: dict, trained: dict, prepared: dict, config: PipelineConfig, run_dir: str) -> dict:
    result = evaluate_tuned(
        model["path"],
        trained["output_dir"],
        trained["mode"],
        prepared["eval_file"],
        config.eval,
        config.data.template,
        config.train.max_seq_length,
        config.model.trust_remote_code,
    )
    atomic_write_json(Path(run_dir) / "generations.json", result["generations"])
    atomic_write_json(Path(run_dir) / "answers.json", result.pop("answers"))
    logger = get_run_logger()
    logger.info("eval loss base %.4f -> tuned %.4f", result["eval_loss_base"], result["eval_loss_tuned"])
    if result["accuracy_base"] is not None:
        logger.info("held-out accuracy base %.3f -> tuned %.3f", result["accuracy_base"], result["accuracy_tuned"])
    return result
