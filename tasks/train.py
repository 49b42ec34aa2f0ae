"""Prefect task: train in a separate process; logs progress every few steps and keeps a progress
artifact up to date so the UI shows it. Cached by model, training rows, settings and code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from smoltune.caching import RESULT, StageCache, complete_token, folder_for, mark_complete, stage_lock
from smoltune.config import PipelineConfig
from smoltune.stage_keys import train_parts
from smoltune.train_runner import train_in_subprocess
from smoltune.training import TrainSpec

STAGE = "train"
LOG_EVERY = 5


@task(name=STAGE, cache_policy=StageCache(stage=STAGE, parts=train_parts), persist_result=True)
def train_task(model: dict, prepared: dict, config: PipelineConfig, cache_dir: str, refresh: bool = False) -> dict:
    """No retries: a failed training is a bug or bad config to fix. Rerunning resumes from its checkpoints,
    which live in the stage folder itself (so it is built in place, not swapped in at the end)."""
    folder = folder_for(STAGE, train_parts, model=model, prepared=prepared, config=config, cache_dir=cache_dir)
    with stage_lock(folder):  # the same job started twice at once trains once
        if refresh and folder.exists():
            shutil.rmtree(folder)
        if complete_token(folder) is not None:
            return json.loads((folder / RESULT).read_text())
        return _train(model, prepared, config, folder)


def _train(model: dict, prepared: dict, config: PipelineConfig, folder: Path) -> dict:
    logger = get_run_logger()
    progress = create_progress_artifact(progress=0.0, description="training steps done (%)")

    def on_step(record: dict) -> None:
        step, total = record["step"], record["max_steps"]
        if step % LOG_EVERY == 0 or step in (1, total):
            logger.info("step %d/%d loss %.4f lr %.2e", step, total, record["loss"], record["learning_rate"])
            update_progress_artifact(progress, progress=100.0 * step / total)

    spec = TrainSpec(
        model["path"],
        prepared["train_file"],
        str(folder),
        config.train.model_dump(mode="json"),
        model["trust_remote_code"],
    )
    result = train_in_subprocess(spec, on_step)
    if result.resumed_from_step:
        logger.info("resumed from the checkpoint at step %d", result.resumed_from_step)
    logger.info(
        "%s/%s: %d steps in %.1f s (%.1f tokens/s); %s",
        result.backend,
        result.mode,
        result.steps,
        result.train_seconds,
        result.tokens_per_second,
        result.backend_reason,
    )
    return mark_complete(folder, {**result.to_dict(), "requires": [result.output_dir]})
