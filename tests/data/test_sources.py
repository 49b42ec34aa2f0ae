"""Sources: every file type, URLs (retries, size limit, sha256 pin), hub ids offline; one-line errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from smoltune.data.sources import DataSourceError, download, load_records

ROWS = [
    {"instruction": "Add the two numbers.", "input": "1 and 2", "output": "3"},
    {"instruction": "Say hi.", "input": "", "output": "hi"},
]


def write_all_formats(folder: Path) -> dict[str, Path]:
    paths = {suffix: folder / f"rows{suffix}" for suffix in (".json", ".jsonl", ".csv", ".parquet")}
    paths[".json"].write_text(json.dumps(ROWS))
    paths[".jsonl"].write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    pd.DataFrame(ROWS).to_csv(paths[".csv"], index=False)
    pd.DataFrame(ROWS).to_parquet(paths[".parquet"])
    return paths


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_every_file_type_loads_the_same_rows(tmp_path: Path, suffix: str) -> None:
    path = write_all_formats(tmp_path)[suffix]
    assert load_records(str(path)) == ROWS


def test_csv_keeps_strings_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "codes.csv"
    path.write_text("instruction,input,output\nCode?,,007\nNA?,NA,NA\n")
    assert load_records(str(path)) == [
        {"instruction": "Code?", "input": "", "output": "007"},
        {"instruction": "NA?", "input": "NA", "output": "NA"},
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("trunc.json", b'[{"instruction": "a", "output": ', "invalid JSON at line 1"),
        ("latin.json", '[{"instruction": "caf\xe9"}]'.encode("latin-1"), "not UTF-8"),
        ("latin.csv", "instruction,output\ncaf\xe9,x\n".encode("latin-1"), "not UTF-8"),
        ("empty.jsonl", b"", "the file is empty"),
        ("blank.csv", b"  \n", "the file is empty"),
        ("obj.json", b'{"instruction": "a"}', "expected a JSON list of objects"),
        ("bad.jsonl", b'{"instruction": "a"}\n{oops\n', "line 2: invalid JSON"),
        ("broken.parquet", b"PAR1 this is not parquet", "not a readable Parquet file"),
        ("rows.txt", b"a,b\n1,2\n", "unsupported extension"),
    ],
)
def test_unreadable_files_get_a_one_line_reason(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataSourceError) as err:
        load_records(str(path))
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_lists_the_accepted_sources() -> None:
    with pytest.raises(DataSourceError, match="'embedded', a .json/.jsonl/.csv/.parquet file"):
        load_records("does/not/exist.jsonl")


def test_local_file_sha256_pin(tmp_path: Path) -> None:
    path = write_all_formats(tmp_path)[".jsonl"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_records(str(path), sha256=digest) == ROWS
    with pytest.raises(DataSourceError, match="data.sha256 pins"):
        load_records(str(path), sha256="0" * 64)


def test_url_is_downloaded_and_pinned(httpserver: HTTPServer, tmp_path: Path) -> None:
    body = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    httpserver.expect_request("/data/rows.jsonl").respond_with_data(body)
    url = httpserver.url_for("/data/rows.jsonl")
    digest = hashlib.sha256(body).hexdigest()
    assert load_records(url, sha256=digest, cache_dir=tmp_path) == ROWS
    with pytest.raises(DataSourceError, match="data.sha256 pins"):
        load_records(url, sha256="f" * 64, cache_dir=tmp_path)


def test_transient_errors_are_retried(httpserver: HTTPServer, tmp_path: Path) -> None:
    body = json.dumps(ROWS).encode()
    calls = {"n": 0}

    def flaky(_request):  # noqa: ANN001
        calls["n"] += 1
        return Response("busy", status=503) if calls["n"] < 3 else Response(body)

    httpserver.expect_request("/rows.json").respond_with_handler(flaky)
    assert load_records(httpserver.url_for("/rows.json"), cache_dir=tmp_path) == ROWS
    assert calls["n"] == 3


def test_persistent_server_errors_give_up_with_a_reason(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/rows.json").respond_with_data("down", status=500)
    with pytest.raises(DataSourceError, match="download failed after 2 attempts: HTTP 500"):
        download(httpserver.url_for("/rows.json"), tmp_path, None, 1, attempts=2)


def test_client_errors_are_not_retried(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_oneshot_request("/missing.json").respond_with_data("no", status=404)
    with pytest.raises(DataSourceError, match="HTTP 404"):
        load_records(httpserver.url_for("/missing.json"), cache_dir=tmp_path)


def test_download_size_limit(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/big.jsonl").respond_with_data(b"x" * 300_000)
    with pytest.raises(DataSourceError, match="max_download_mb"):
        load_records(httpserver.url_for("/big.jsonl"), max_download_mb=0.1, cache_dir=tmp_path)
    assert not list(tmp_path.glob("*.jsonl"))  # nothing partial left behind


def test_offline_hub_dataset_names_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataSourceError) as err:
        load_records("yahma/alpaca-cleaned")
    assert "yahma/alpaca-cleaned" in str(err.value) and "data.source=embedded" in str(err.value)


def test_a_file_too_big_for_free_memory_is_refused_with_figures(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """Rows that would not fit in memory stop with the sizes, before reading, not with an out-of-memory kill."""
    import collections

    import psutil

    from smoltune.data.sources import DataSourceError, read_file

    path = tmp_path / "rows.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n' * 1000)
    assert len(read_file(path)) == 1000
    memory = collections.namedtuple("memory", "available")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory(available=100_000))
    with pytest.raises(DataSourceError, match=r"MB of rows need about .* MB are free"):
        read_file(path)
