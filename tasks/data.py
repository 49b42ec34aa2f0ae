"""Prefect tasks of the data stage: fetch, validate (the Great Expectations gate), prepare. Each is cached
by content (see `smoltune.caching`): the same rows and settings never run twice."""

from __future__ import annotations

import shutil
from pathlib import Path

from prefect import get_run_logger, task

from data_checks.gate import check_dataset
from data_checks.suite import DataValidationError
from smoltune.caching import StageCache, folder_for, run_stage
from smoltune.config import DataConfig, TrainConfig, ValidationConfig
from smoltune.data import fetch_dataset, prepare_dataset
from smoltune.files import atomic_write_json
from smoltune.stage_keys import fetch_parts, prepare_parts, validate_parts
from smoltune.tokens import load_tokenizer


@task(
    name="fetch_dataset",
    cache_policy=StageCache(stage="fetch_dataset", parts=fetch_parts),
    persist_result=True,
    retries=2,
    retry_delay_seconds=10,
)
def fetch_dataset_task(data: DataConfig, cache_dir: str, refresh: bool = False) -> dict:
    """Retried because URL and hub sources can fail transiently (the URL reader also retries each request)."""
    folder = folder_for("fetch_dataset", fetch_parts, data=data, cache_dir=cache_dir)
    fetched = run_stage(folder, lambda out: fetch_dataset(data, out), refresh)
    get_run_logger().info("fetched %d rows from %s", fetched["rows"], data.source)
    return fetched


@task(
    name="validate_dataset",
    cache_policy=StageCache(stage="validate_dataset", parts=validate_parts),
    persist_result=True,
)
def validate_dataset_task(
    fetched: dict,
    model: dict,
    data: DataConfig,
    validation: ValidationConfig,
    train: TrainConfig,
    cache_dir: str,
    refresh: bool = False,
) -> dict:
    """Stops the flow (raises) when a critical expectation fails, before any model is loaded for training.
    A failed validation is never cached: fix the data and rerun."""
    logger = get_run_logger()
    inputs = {"fetched": fetched, "model": model, "data": data, "validation": validation, "train": train}
    folder = folder_for("validate_dataset", validate_parts, cache_dir=cache_dir, **inputs)

    def compute(out: Path) -> dict:
        tokenizer = load_tokenizer(model["path"], model["trust_remote_code"])
        outcome = check_dataset(
            fetched["path"], validation, tokenizer, data.template, train.max_seq_length, out / "data_docs"
        )
        atomic_write_json(out / "validation.json", outcome.to_dict())
        for check in outcome.warnings:
            logger.warning("data warning: %s", check.describe())
        if not outcome.success:
            # The stage folder is discarded on failure; keep what the user needs to fix the data.
            kept = shutil.copytree(out, folder.with_name(folder.name + ".failed"), dirs_exist_ok=True)
            # The copy's report must name the copy's Data Docs, not the temporary folder about to be discarded.
            report = kept / "validation.json"
            report.write_text(report.read_text().replace(str(out), str(kept)))
            raise DataValidationError(outcome, fetched["source"], str(kept / "validation.json"))
        return outcome.to_dict()

    result = run_stage(folder, compute, refresh)
    logger.info("validation passed: %d expectations on %d rows", len(result["checks"]), result["row_count"])
    return result


@task(
    name="prepare_dataset", cache_policy=StageCache(stage="prepare_dataset", parts=prepare_parts), persist_result=True
)
def prepare_dataset_task(fetched: dict, model: dict, data: DataConfig, cache_dir: str, refresh: bool = False) -> dict:
    def compute(out: Path) -> dict:
        tokenizer = load_tokenizer(model["path"], model["trust_remote_code"]) if data.template == "chat" else None
        return prepare_dataset(fetched["path"], data, out, tokenizer)

    folder = folder_for("prepare_dataset", prepare_parts, fetched=fetched, model=model, data=data, cache_dir=cache_dir)
    prepared = run_stage(folder, compute, refresh)
    get_run_logger().info("prepared %d training and %d held-out rows", prepared["train_rows"], prepared["eval_rows"])
    return prepared
