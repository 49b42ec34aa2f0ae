"""Prefect tasks of the data stage: fetch, validate (the Great Expectations gate), prepare."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact
from prefect.cache_policies import NO_CACHE

from data_checks.gate import check_dataset
from data_checks.suite import DataValidationError
from smoltune.config import DataConfig, ModelConfig, TrainConfig, ValidationConfig
from smoltune.data import fetch_dataset, prepare_dataset
from smoltune.files import atomic_write_json
from smoltune.tokens import load_tokenizer

DATA_DOCS_ARTIFACT_KEY = "smoltune-data-docs"


@task(name="fetch_dataset", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def fetch_dataset_task(data: DataConfig, run_dir: str) -> dict:
    """Retried because URL and hub sources can fail transiently (the URL reader also retries each request)."""
    fetched = fetch_dataset(data, Path(run_dir) / "data")
    get_run_logger().info("fetched %d rows from %s", fetched["rows"], data.source)
    return fetched


@task(name="validate_dataset", cache_policy=NO_CACHE)
def validate_dataset_task(
    fetched: dict,
    model: dict,
    model_config: ModelConfig,
    data: DataConfig,
    validation: ValidationConfig,
    train: TrainConfig,
    run_dir: str,
) -> dict:
    """Stops the flow (raises) when a critical expectation fails, before any model is loaded for training."""
    tokenizer = load_tokenizer(model["path"], model_config.trust_remote_code)
    docs_dir = Path(run_dir) / "data_docs"
    outcome = check_dataset(fetched["path"], validation, tokenizer, data.template, train.max_seq_length, docs_dir)
    atomic_write_json(Path(run_dir) / "validation.json", outcome.to_dict())
    if outcome.data_docs:
        create_link_artifact(
            key=DATA_DOCS_ARTIFACT_KEY,
            link=Path(outcome.data_docs).as_uri(),
            link_text="Great Expectations Data Docs",
            description=f"Validation of {data.source}",
        )
    logger = get_run_logger()
    for check in outcome.warnings:
        logger.warning("data warning: %s", check.describe())
    if not outcome.success:
        raise DataValidationError(outcome, fetched["source"])
    logger.info("validation passed: %d expectations on %d rows", len(outcome.checks), outcome.row_count)
    return outcome.to_dict()


@task(name="prepare_dataset", cache_policy=NO_CACHE)
def prepare_dataset_task(fetched: dict, model: dict, model_config: ModelConfig, data: DataConfig, run_dir: str) -> dict:
    tokenizer = load_tokenizer(model["path"], model_config.trust_remote_code) if data.template == "chat" else None
    prepared = prepare_dataset(fetched["path"], data, Path(run_dir) / "data", tokenizer)
    get_run_logger().info("prepared %d training and %d held-out rows", prepared["train_rows"], prepared["eval_rows"])
    return prepared
