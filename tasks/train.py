"""Prefect task: train the adapter; logs progress every few steps so the UI shows it."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from smoltune.config import ModelConfig, TrainConfig
from smoltune.training import train_lora

LOG_EVERY = 5


@task(name="train", cache_policy=NO_CACHE)
def train_task(model: dict, model_config: ModelConfig, prepared: dict, train: TrainConfig, run_dir: str) -> dict:
    """No retries: a failed training run is a bug or bad config to fix, not a transient error."""
    logger = get_run_logger()

    def on_step(record: dict, total: int) -> None:
        if record["step"] % LOG_EVERY == 0 or record["step"] in (1, total):
            logger.info("step %d/%d loss %.4f lr %.2e", record["step"], total, record["loss"], record["learning_rate"])

    result = train_lora(
        model["path"],
        prepared["train_file"],
        str(Path(run_dir) / "train"),
        train,
        model_config.trust_remote_code,
        on_step,
    )
    logger.info(
        "trained %d steps in %.1f s (%.1f tokens/s)",
        result.steps,
        result.train_seconds,
        result.tokens_per_second,
    )
    return result.to_dict()
