"""Prefect task: train in a separate process; logs progress every few steps so the UI shows it."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from smoltune.config import PipelineConfig
from smoltune.train_runner import train_in_subprocess
from smoltune.training import TrainSpec, train_work_dir

LOG_EVERY = 5


@task(name="train", cache_policy=NO_CACHE)
def train_task(model: dict, prepared: dict, config: PipelineConfig, run_dir: str) -> dict:
    """No retries: a failed training is a bug or bad config to fix. Rerunning the flow resumes it."""
    logger = get_run_logger()
    work_dir = train_work_dir(config.output.runs_dir, model["sha256"], prepared["train_file"], config.train)
    spec = TrainSpec(
        model["path"],
        prepared["train_file"],
        str(work_dir),
        config.train.model_dump(mode="json"),
        config.model.trust_remote_code,
    )

    def on_step(record: dict) -> None:
        step, total = record["step"], record["max_steps"]
        if step % LOG_EVERY == 0 or step in (1, total):
            logger.info("step %d/%d loss %.4f lr %.2e", step, total, record["loss"], record["learning_rate"])

    result = train_in_subprocess(spec, on_step)
    link = Path(run_dir) / "train"
    if not link.exists():
        link.symlink_to(work_dir, target_is_directory=True)  # the run folder shows its training output
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
    return result.to_dict()
