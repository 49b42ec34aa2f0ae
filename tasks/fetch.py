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
from smoltune.files import link_or_copy, sha256_file
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
        got = keyed_download(data, cache_dir, folder)
        try:
            return fetch_dataset(data, out, got)
        finally:
            if got is not None:
                got.path.unlink(missing_ok=True)  # the pinned bytes: read, normalised into the rows file

    fetched = STAGE.run(folder, compute, refresh)
    logger = get_run_logger()
    logger.info("fetched %d rows from %s (%s)", fetched.rows, fetched.source, fetched.identity)
    if fetched.note:
        logger.warning(fetched.note)
    return fetched


def keyed_download(data: DataConfig, cache_dir: str, folder: Path) -> Download | None:
    """A URL's rows are the very bytes the folder's key was computed from: the copy that the key's request
    left on disk (read without a second request), found by the key it gives, reached or not, and pinned by a
    link in the stage folder whose bytes are hashed again before they are read. A copy replaced since
    (another run downloaded newer content meanwhile) stops the run rather than file new rows under the
    old key; running again trains on the new content."""
    if source_kind(data.source) != "url":
        return None
    copy = downloaded_copy(data.source)
    keyed = next(
        (got for got in ((copy, replace(copy, offline=True)) if copy else ()) if _gives(got, data, cache_dir, folder)),
        None,
    )
    pinned = folder / f"source{copy.path.suffix}" if copy else None
    if keyed is not None and pinned is not None:
        link_or_copy(keyed.path, pinned)
        if sha256_file(pinned) == keyed.sha256:
            return replace(keyed, path=pinned)
    raise DataSourceError(
        f"{redact(data.source)}: its content changed while this run was reading it (another run downloaded a "
        "newer copy); run again to train on the new content"
    )


def _gives(got: Download, data: DataConfig, cache_dir: str, folder: Path) -> bool:
    return STAGE.folder(data=data, cache_dir=cache_dir, download=got) == folder
