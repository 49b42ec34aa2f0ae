"""The fetch stage reads a URL's rows from the very bytes its cache key was computed from: the download the key
made (no second request), pinned in the stage folder and hashed again; a copy replaced in between, by another
run's download, stops the run instead of filing new rows under the old key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from smoltune.config import DataConfig
from smoltune.data.builtin import generate_rows
from smoltune.data.sources import DataSourceError, downloaded_copy
from tasks.fetch import STAGE, keyed_download


def body(seed: int) -> str:
    return "".join(json.dumps(r) + "\n" for r in generate_rows(12, seed=seed))


@pytest.fixture
def keyed(httpserver: HTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """(data config, cache dir, the stage folder its key names): the key's request made, as the cache policy does."""
    monkeypatch.setenv("SMOLTUNE_HOME", str(tmp_path / "home"))
    httpserver.expect_request("/rows.jsonl").respond_with_data(body(1))
    data = DataConfig(source=httpserver.url_for("/rows.jsonl"))
    cache_dir = str(tmp_path / "cache")
    folder = STAGE.folder(data=data, cache_dir=cache_dir)
    folder.mkdir(parents=True)
    return data, cache_dir, folder


def test_the_rows_read_are_the_bytes_the_key_was_computed_from(keyed, httpserver: HTTPServer) -> None:  # noqa: ANN001
    data, cache_dir, folder = keyed
    requests = len(httpserver.log)
    got = keyed_download(data, cache_dir, folder)
    assert len(httpserver.log) == requests  # no second request
    assert got.path.parent == folder and got.path.read_text() == body(1)


def test_a_copy_replaced_under_the_key_stops_the_run(keyed) -> None:  # noqa: ANN001
    data, cache_dir, folder = keyed
    copy = downloaded_copy(data.source)
    copy.path.write_text(body(2))  # another run's download, caught before it rewrote the copy's metadata
    with pytest.raises(DataSourceError, match="changed while this run was reading it"):
        keyed_download(data, cache_dir, folder)


def test_a_newer_download_finished_meanwhile_stops_the_run(keyed, httpserver: HTTPServer) -> None:  # noqa: ANN001
    from smoltune.data.stage import download_data

    data, cache_dir, folder = keyed
    httpserver.clear()
    httpserver.expect_request("/rows.jsonl").respond_with_data(body(3))
    download_data(data)  # another run: new content, copy and metadata both rewritten
    with pytest.raises(DataSourceError, match="changed while this run was reading it"):
        keyed_download(data, cache_dir, folder)
