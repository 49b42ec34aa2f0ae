"""Prefect task: train in a separate process; logs progress every few steps and keeps a progress
artifact up to date so the UI shows it. Cached by model, training rows, the gate, settings and code."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from smoltune.config import PipelineConfig
from smoltune.model import check_lora_targets
from smoltune.pipeline.cache import Stage
from smoltune.pipeline.keys import train_parts
from smoltune.pipeline.slots import training_slot
from smoltune.pipeline.stopping import cancelled_task_when_stopped
from smoltune.records import Prepared, ResolvedModel, Trained
from smoltune.train.runner import train_in_subprocess
from smoltune.train.spec import TrainSpec

# Resumable: the checkpoints of an interrupted training live in the stage folder itself.
STAGE = Stage("train", Trained, train_parts, __name__, resumable=True)
LOG_EVERY = 5


@task(name=STAGE.name, cache_policy=STAGE.cache_policy(), persist_result=True, result_serializer="json")
@cancelled_task_when_stopped  # a signal ends the task run Cancelled, kept out of the cache
def train_task(
    model: ResolvedModel, prepared: Prepared, config: PipelineConfig, cache_dir: str, refresh: bool = False
) -> Trained:
    """No retries: a failed training is a bug or bad config to fix. Rerunning resumes from its checkpoints."""
    folder = STAGE.task_folder(cache_dir, model=model, prepared=prepared, config=config)
    return STAGE.run(folder, lambda out: _train(model, prepared, config, out), refresh)


def _train(model: ResolvedModel, prepared: Prepared, config: PipelineConfig, folder: Path) -> Trained:
    logger = get_run_logger()
    if config.train.mode == "lora":
        check_lora_targets(model.path, config.train.lora.target_modules)
    progress = create_progress_artifact(progress=0.0, description="training steps done (%)")

    def on_step(record: dict) -> None:
        step, total = record["step"], record["max_steps"]
        if step % LOG_EVERY == 0 or step in (1, total):
            logger.info("step %d/%d loss %.4f lr %.2e", step, total, record["loss"], record["learning_rate"])
            update_progress_artifact(progress, progress=100.0 * step / total)

    spec = TrainSpec(
        model.path,
        prepared.train_file,
        str(folder),
        config.train.model_dump(mode="json"),
        model.trust_remote_code,
        base_model_id=model.hub_id,
        load_in_4bit=config.model.load_in_4bit,
        train_tokens=prepared.train_tokens_file,
    )
    # One of this machine's training slots: its Prefect concurrency limit under a server, else a file lock.
    result = train_in_subprocess(spec, on_step, slot=training_slot())
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
    return Trained(result=result)
