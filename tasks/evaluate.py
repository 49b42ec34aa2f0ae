"""Prefect task: held-out eval loss, accuracy and prompt generations, base vs tuned. Cached by the model,
the trained weights' key, the held-out rows, the eval settings and the prompts file's content."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from smoltune.caching import StageCache, folder_for, run_stage
from smoltune.config import PipelineConfig
from smoltune.evaluation import evaluate_tuned
from smoltune.files import atomic_write_json
from smoltune.stage_keys import evaluate_parts

STAGE = "evaluate"


@task(name=STAGE, cache_policy=StageCache(stage=STAGE, parts=evaluate_parts), persist_result=True)
def evaluate_task(
    model: dict, trained: dict, prepared: dict, config: PipelineConfig, cache_dir: str, refresh: bool = False
) -> dict:
    def compute(out: Path) -> dict:
        result = evaluate_tuned(
            model["path"],
            trained["output_dir"],
            trained["mode"],
            prepared["eval_file"],
            config.eval,
            config.data.template,
            config.train.max_seq_length,
            model["trust_remote_code"],
        )
        atomic_write_json(out / "generations.json", result["generations"])
        atomic_write_json(out / "answers.json", result.pop("answers"))
        return result

    inputs = {"model": model, "trained": trained, "prepared": prepared, "config": config}
    result = run_stage(folder_for(STAGE, evaluate_parts, cache_dir=cache_dir, **inputs), compute, refresh)
    logger = get_run_logger()
    logger.info("eval loss base %.4f -> tuned %.4f", result["eval_loss_base"], result["eval_loss_tuned"])
    if result["accuracy_base"] is not None:
        logger.info("held-out accuracy base %.3f -> tuned %.3f", result["accuracy_base"], result["accuracy_tuned"])
    return result
