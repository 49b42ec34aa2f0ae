"""Prefect tasks of the data stage: fetch, validate (the Great Expectations gate), prepare."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from data_checks.suite import DataValidationError, run_checks
from smoltune.config import DataConfig, ValidationConfig
from smoltune.data import fetch_dataset, prepare_dataset
from smoltune.files import atomic_write_json, read_jsonl


@task(name="fetch_dataset", cache_policy=NO_CACHE)
def fetch_dataset_task(data: DataConfig, run_dir: str) -> dict:
    fetched = fetch_dataset(data.source, Path(run_dir) / "data")
    get_run_logger().info("fetched %d rows from %s", fetched["rows"], data.source)
    return fetched


@task(name="validate_dataset", cache_policy=NO_CACHE)
def validate_dataset_task(fetched: dict, validation: ValidationConfig, run_dir: str) -> dict:
    """Stops the flow (raises) when a critical expectation fails, before any model is loaded for training."""
    outcome = run_checks(pd.DataFrame(read_jsonl(fetched["path"])), min_rows=validation.min_rows)
    atomic_write_json(Path(run_dir) / "validation.json", outcome.to_dict())
    logger = get_run_logger()
    for check in outcome.warnings:
        logger.warning("data warning: %s", check.describe())
    if not outcome.success:
        raise DataValidationError(outcome, fetched["source"])
    logger.info("validation passed: %d expectations on %d rows", len(outcome.checks), outcome.row_count)
    return outcome.to_dict()


@task(name="prepare_dataset", cache_policy=NO_CACHE)
def prepare_dataset_task(fetched: dict, data: DataConfig, run_dir: str) -> dict:
    prepared = prepare_dataset(fetched["path"], data.num_samples, data.eval_samples, data.seed, Path(run_dir) / "data")
    get_run_logger().info("prepared %d training and %d held-out rows", prepared["train_rows"], prepared["eval_rows"])
    return prepared
