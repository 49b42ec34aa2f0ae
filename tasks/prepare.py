"""Prefect task: split the gated rows into training and held-out rows and format their prompts."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from smoltune.config import DataConfig
from smoltune.data.stage import prepare_dataset
from smoltune.data.tokens import load_tokenizer
from smoltune.pipeline.cache import Stage
from smoltune.pipeline.keys import prepare_parts
from smoltune.records import Fetched, Prepared, ResolvedModel, Validated

STAGE = Stage("prepare_dataset", Prepared, prepare_parts, __name__)


@task(name=STAGE.name, cache_policy=STAGE.cache_policy(), persist_result=True, result_serializer="json")
def prepare_dataset_task(
    fetched: Fetched,
    validated: Validated,
    model: ResolvedModel,
    data: DataConfig,
    cache_dir: str,
    refresh: bool = False,
) -> Prepared:
    def compute(out: Path) -> Prepared:
        # The model's tokenizer formats chat prompts and tokenises the training rows once, for every retrain.
        tokenizer = load_tokenizer(model.path, model.trust_remote_code)
        return prepare_dataset(fetched.rows_file, data, out, tokenizer, validated_key=validated.key)

    inputs = {"fetched": fetched, "validated": validated, "model": model, "data": data}
    prepared = STAGE.run(STAGE.task_folder(cache_dir=cache_dir, **inputs), compute, refresh)
    logger = get_run_logger()
    logger.info("prepared %d training and %d held-out rows", prepared.train_rows, prepared.eval_rows)
    if prepared.note:
        logger.warning(prepared.note)
    return prepared
