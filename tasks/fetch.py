"""Prefect task: load `data.source` (file, URL, hub dataset or the built-in rows) as normalised rows.

Cached by the source's content: a file's hash, a URL's content (a conditional request downloads only what
changed), a hub dataset's commit. So a scheduled retrain on a URL reruns exactly when the data changed."""

from __future__ import annotations

from prefect import get_run_logger, task

from smoltune.config import DataConfig
from smoltune.data.stage import fetch_dataset
from smoltune.pipeline.cache import Stage
from smoltune.pipeline.keys import fetch_parts
from smoltune.pipeline.records import Fetched

STAGE = Stage("fetch_dataset", Fetched, fetch_parts, __name__)


@task(
    name=STAGE.name,
    cache_policy=STAGE.cache_policy(),
    persist_result=True,
    result_serializer="json",
    retries=2,
    retry_delay_seconds=10,
)
def fetch_dataset_task(data: DataConfig, cache_dir: str, refresh: bool = False) -> Fetched:
    """Retried because URL and hub sources can fail transiently (the URL reader also retries each request)."""
    fetched = STAGE.run(STAGE.folder(data=data, cache_dir=cache_dir), lambda out: fetch_dataset(data, out), refresh)
    logger = get_run_logger()
    logger.info("fetched %d rows from %s (%s)", fetched.rows, data.source, fetched.identity)
    if fetched.note:
        logger.warning(fetched.note)
    return fetched
