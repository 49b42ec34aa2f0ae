"""Prefect task: the Great Expectations gate. Stops the flow (raises) when a critical expectation fails,
before any model is loaded for training. Cached by the rows, the tokenizer, the settings and the code of
`data_checks/`: a stricter suite re-gates the data and reruns everything after it."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import get_run_logger, task

from data_checks.gate import check_dataset
from data_checks.suite import DataValidationError
from smoltune.config import DataConfig, TrainConfig, ValidationConfig
from smoltune.data.tokens import load_tokenizer
from smoltune.files import atomic_write_json
from smoltune.pipeline.cache import Stage
from smoltune.pipeline.keys import validate_parts
from smoltune.records import CheckSummary, Fetched, ResolvedModel, Validated

STAGE = Stage("validate_dataset", Validated, validate_parts, __name__)


@task(name=STAGE.name, cache_policy=STAGE.cache_policy(), persist_result=True, result_serializer="json")
def validate_dataset_task(
    fetched: Fetched,
    model: ResolvedModel,
    data: DataConfig,
    validation: ValidationConfig,
    train: TrainConfig,
    cache_dir: str,
    refresh: bool = False,
) -> Validated:
    """A failed validation is never cached: its folder keeps the report and Data Docs, unmarked, until the
    next run of the same data replaces it."""
    logger = get_run_logger()
    inputs = {"fetched": fetched, "model": model, "data": data, "validation": validation, "train": train}

    def compute(out: Path) -> Validated:
        tokenizer = load_tokenizer(model.path, model.trust_remote_code)
        outcome = check_dataset(
            fetched.rows_file, validation, tokenizer, data.template, train.max_seq_length, out / "data_docs"
        )
        report = atomic_write_json(out / "validation.json", outcome.to_dict())
        for check in outcome.warnings:
            logger.warning("data warning: %s", check.describe())
        if not outcome.success:
            raise DataValidationError(outcome, fetched.source, str(report))
        return Validated(
            success=outcome.success,
            row_count=outcome.row_count,
            checks=[CheckSummary(**asdict(c)) for c in outcome.checks],
            data_docs=outcome.data_docs,
            report_file=str(report),
        )

    result = STAGE.run(STAGE.task_folder(cache_dir=cache_dir, **inputs), compute, refresh)
    logger.info("validation passed: %d expectations on %d rows", len(result.checks), result.row_count)
    return result
