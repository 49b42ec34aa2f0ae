"""Prefect task: load `data.source` (file, URL, hub dataset or the built-in rows) as normalised rows.

Cached by the source's content: a file's hash, a URL's content (a conditional request downloads only what
changed), a hub dataset's commit. So a scheduled retrain on a URL reruns exactly when the data changed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prefect import get_run_logger, task

from smoltune.config import DataConfig
from smoltune.data.sources import DataSourceError, Download, downloaded_copy
from smoltune.data.stage import fetch_dataset
from smoltune.pipeline.cache import Stage
from smoltune.pipeline.keys import fetch_parts
from smoltune.records import Fetched
from smoltune.redaction import redact
from smoltune.sources import source_kind

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
    folder = STAGE.task_folder(cache_dir, data=data)

    def compute(out: Path) -> Fetched:
        return fetch_dataset(data, out, keyed_download(data, cache_dir, folder))

    fetched = STAGE.run(folder, compute, refresh)
    logger = get_run_logger()
    logger.info("fetched %d rows from %s (%s)", fetched.rows, fetched.source, fetched.identity)
    if fetched.note:
        logger.warning(fetched.note)
    return fetched


def keyed_download(data: DataConfig, cache_dir: str, folder: Path) -> Download | None:
    """A URL's rows are the very bytes the folder's key was computed from: the copy that the key's request
    left on disk (read without a second request), found by the key it gives, reached or not. A copy
    replaced since (another run downloaded newer content) stops the run rather than file new rows under
    the old key."""
    if source_kind(data.source) != "url":
        return None
    copy = downloaded_copy(data.source)
    for got in (copy, replace(copy, offline=True)) if copy else ():
        if STAGE.folder(data=data, cache_dir=cache_dir, download=got) == folder:
            return got
    raise DataSourceError(
        f"{redact(data.source)}: its content changed while this run was reading it (another run downloaded a "
        "newer copy); run again to train on the new content"
    )
