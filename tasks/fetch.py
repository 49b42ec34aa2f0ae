"""Prefect task: load `data.source` (file, URL, hub dataset or the built-in rows) as normalised rows.

Cached by the source's content: a file's hash, a URL's content (a conditional request downloads only what
changed), a hub dataset's commit. So a scheduled retrain on a URL reruns exactly when the data changed."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from smoltune.config import DataConfig, is_url
from smoltune.data.stage import fetch_dataset
from smoltune.pipeline.cache import Stage
from smoltune.pipeline.keys import fetch_parts, source_download
from smoltune.pipeline.records import Fetched

STAGE = Stage("fetch_dataset", Fetched, fetch_parts, __name__)


@task(
    name=STAGE.name,
    cache_policy=STAGE.cache_policy(),
    persist_result=True,
    result_serializer="json",
)
def fetch_dataset_task(data: DataConfig, cache_dir: str, refresh: bool = False) -> Fetched:
    """No task retries: the URL reader retries transient failures (timeouts, 429, 5xx) itself, and a 404, a
    sha256 mismatch or a missing column will not heal by trying again."""

    def compute(out: Path) -> Fetched:
        # A URL's rows are the very bytes its cache key was computed from (one download per run).
        return fetch_dataset(data, out, source_download(data) if is_url(data.source) else None)

    fetched = STAGE.run(STAGE.folder(data=data, cache_dir=cache_dir), compute, refresh)
    logger = get_run_logger()
    logger.info("fetched %d rows from %s (%s)", fetched.rows, fetched.source, fetched.identity)
    if fetched.note:
        logger.warning(fetched.note)
    return fetched
