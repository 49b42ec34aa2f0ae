"""Where external training rows come from: local files, http(s) URLs and hub datasets.

    python -c "from smoltune.data.sources import load_records; print(load_records('rows.jsonl')[:1])"

Every reader returns a list of plain dicts (records) in whatever shape the source has; `smoltune.data.formats`
turns them into Alpaca rows. A source that cannot be read raises `DataSourceError` with one line that names
the file (or URL, or dataset) and the problem.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from smoltune.errors import SourceError
from smoltune.files import atomic_write_bytes_stream, atomic_write_json, sha256_file, smoltune_home
from smoltune.sources import source_kind

Record = dict[str, Any]


FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


class DataSourceError(SourceError):
    """A dataset that cannot be read; the message names the source and the problem in one line."""


def load_records(
    source: str,
    *,
    revision: str | None = None,
    subset: str | None = None,
    split: str = "train",
    sha256: str | None = None,
    max_download_mb: float = 512,
    download_timeout_s: float = 600,
    cache_dir: Path | None = None,
) -> list[Record]:
    """Records of an external `data.source`: a local file, an http(s) URL, or a hub dataset id."""
    kind = source_kind(source)
    if kind == "url":
        got = download_source(source, sha256, max_download_mb, download_timeout_s, cache_dir)
        return read_file(got.path, label=source)
    if kind == "local":
        path = Path(source).expanduser()
        if sha256 is not None:
            check_sha256(path, sha256, label=source)
        return read_file(path)
    if kind == "hub":
        return read_hub_dataset(source, revision, subset, split)
    raise DataSourceError(
        f"{source}: no such file (data.source takes 'embedded', a {'/'.join(FILE_SUFFIXES)} file, "
        "an http(s) URL or a hub dataset id like yahma/alpaca-cleaned)"
    )


def read_file(path: Path, label: str | None = None) -> list[Record]:
    """Records of a local .json / .jsonl / .csv / .parquet file."""
    name = label or str(path)
    suffix = path.suffix.lower()  # downloads keep the URL's suffix
    readers = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}
    if suffix not in readers:
        raise DataSourceError(f"{name}: unsupported extension {suffix!r}; use one of {', '.join(FILE_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise DataSourceError(f"{name}: the file is empty")
    check_fits_in_memory(path, name)
    records = readers[suffix](path, name)
    if not records:
        raise DataSourceError(f"{name}: the file holds no rows")
    return records


# Memory the fetch stage needs per byte of (uncompressed) data: measured 2.6x for the records of a JSON or JSONL
# file of Alpaca rows, and the stage holds the text, the records, the normalised rows and the output text at once.
MEMORY_PER_BYTE = 8


def check_fits_in_memory(path: Path, name: str) -> None:
    """Refuse, with the figures, a file whose rows would not fit in the memory free now: a clear message
    instead of the kernel's out-of-memory kill halfway through reading it."""
    import psutil

    size = path.stat().st_size
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(path).metadata
            size = max(size, sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)))
        except Exception:  # noqa: BLE001 - an unreadable file is reported by the reader, with its own message
            pass
    needed, free = size * MEMORY_PER_BYTE, psutil.virtual_memory().available
    if needed > free:
        raise DataSourceError(
            f"{name}: {size / 2**20:.0f} MB of rows need about {needed / 2**20:.0f} MB of memory to read and "
            f"{free / 2**20:.0f} MB are free; use a smaller file (data.num_samples only samples after reading) "
            "or a machine with more memory"
        )


def _read_text(path: Path, name: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataSourceError(f"{name}: not UTF-8 text (invalid byte at offset {err.start})") from None
    if not text.strip():
        raise DataSourceError(f"{name}: the file is empty")
    return text


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]


def _parse_json(text: str, where: str) -> Any:
    """`json.loads` with every way it refuses input as a DataSourceError: syntax, an integer too long to convert
    (ValueError past Python's 4,300 digits), nesting deeper than the recursion limit (RecursionError)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataSourceError(f"{where}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    except ValueError as err:
        raise DataSourceError(f"{where}: a JSON value cannot be read ({_first_line(err)[:120]})") from None
    except RecursionError:
        raise DataSourceError(f"{where}: JSON nested too deeply to read") from None


def _read_json(path: Path, name: str) -> list[Record]:
    data = _parse_json(_read_text(path, name), name)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]  # a common wrapper: {"data": [...]}
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataSourceError(f"{name}: expected a JSON list of objects")
    return data


def _read_jsonl(path: Path, name: str) -> list[Record]:
    records = []
    # Lines end at "\n" only: `splitlines` would also cut inside a JSON string holding U+0085 or U+2028, which
    # JSON allows unescaped (found by tests/fuzz).
    for number, line in enumerate(_read_text(path, name).split("\n"), start=1):
        if not line.strip():
            continue
        record = _parse_json(line, f"{name}: line {number}")
        if not isinstance(record, dict):
            raise DataSourceError(f"{name}: line {number} is not a JSON object")
        records.append(record)
    return records


def _read_csv(path: Path, name: str) -> list[Record]:
    import pandas as pd

    _read_text(path, name)  # the same UTF-8 and emptiness checks as the JSON readers
    try:
        # Strings stay strings: no "NA" -> NaN, no "007" -> 7.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataSourceError(f"{name}: not a readable CSV: {_first_line(err)}") from None
    return frame.to_dict(orient="records")


def _read_parquet(path: Path, name: str) -> list[Record]:
    """Rows as Python values: Arrow's own conversion gives list columns (chat `messages`, preference
    `chosen` / `rejected` message lists) as lists, where pandas would give numpy arrays."""
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        return [json_safe(row) for row in table.to_pylist()]
    except (pyarrow.ArrowException, OSError, ValueError) as err:
        raise DataSourceError(f"{name}: not a readable Parquet file: {_first_line(err)}") from None


def check_sha256(path: Path, expected: str, label: str) -> None:
    actual = sha256_file(path)
    if actual != expected.lower():
        raise DataSourceError(f"{label}: sha256 is {actual}, but data.sha256 pins {expected}")


class TransientDownloadError(RuntimeError):
    """A failure worth retrying: a timeout, a dropped connection, HTTP 429 or 5xx."""


def downloads_dir() -> Path:
    return smoltune_home() / "downloads"


@dataclass(frozen=True)
class Download:
    """A URL's content on disk; `offline` when the server could not be reached and an earlier copy is used."""

    path: Path
    sha256: str
    offline: bool = False
    fetched_at: str = ""


def _copy_of(url: str, cache_dir: Path) -> Path:
    """Where the copy of `url` lives: named by the URL's hash, with its suffix (which picks the reader)."""
    return cache_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:24]}{Path(urlparse(url).path).suffix.lower()}"


def _meta_of(target: Path) -> Path:
    return target.with_name(target.name + ".meta.json")


def downloaded_copy(url: str, cache_dir: Path | None = None) -> Download | None:
    """The copy of `url` already on disk, as its last download left it (no network); None if there is none."""
    target = _copy_of(url, cache_dir or downloads_dir())
    if not target.is_file() or not _meta_of(target).is_file():
        return None
    meta = json.loads(_meta_of(target).read_text())
    return Download(target, meta["sha256"], fetched_at=meta["fetched_at"])


def download_source(
    url: str, sha256: str | None, max_mb: float, deadline_s: float, cache_dir: Path | None = None
) -> Download:
    """A URL source's content, as every caller gets it (the fetch stage's key, its rows, `load_records`):
    one download folder, one size limit, one deadline, the sha256 pin checked."""
    return download(url, cache_dir or downloads_dir(), sha256, max_mb, deadline_s=deadline_s)


def download(
    url: str, cache_dir: Path, sha256: str | None, max_mb: float, attempts: int = 4, deadline_s: float = 600
) -> Download:
    """The content of `url` in `cache_dir` (named by the URL's hash), fetched only when it changed.

    The request is conditional on the ETag / Last-Modified of the copy already here: an unchanged file costs
    one 304 and no body, a changed one is streamed and hashed. Transient failures retry with backoff; when the
    server stays unreachable an earlier copy is used and marked `offline`."""
    from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

    target = _copy_of(url, cache_dir)
    meta_file = _meta_of(target)
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() and target.is_file() else None
    fetch = retry(
        retry=retry_if_exception_type(TransientDownloadError),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.5, max=8),
        reraise=True,
    )(_fetch_once)
    try:
        deadline = time.monotonic() + deadline_s  # one deadline for every attempt together
        validators = fetch(url, target, int(max_mb * 2**20), _conditional_headers(meta), deadline)
    except TransientDownloadError as err:
        if meta is None:
            raise DataSourceError(f"{url}: download failed after {attempts} attempts: {err}") from None
        got = Download(target, meta["sha256"], offline=True, fetched_at=meta["fetched_at"])
    else:
        if validators is None:  # 304 Not Modified: the copy here is current
            got = Download(target, meta["sha256"], fetched_at=meta["fetched_at"])
        else:
            got = Download(target, sha256_file(target), fetched_at=datetime.now(UTC).isoformat(timespec="seconds"))
            atomic_write_json(meta_file, {**validators, "sha256": got.sha256, "fetched_at": got.fetched_at})
    if sha256 is not None:
        check_sha256(target, sha256, label=url)
    return got


def _conditional_headers(meta: dict[str, Any] | None) -> dict[str, str]:
    if not meta:
        return {}
    headers = {}
    if meta.get("etag"):
        headers["If-None-Match"] = meta["etag"]
    if meta.get("last_modified"):
        headers["If-Modified-Since"] = meta["last_modified"]
    return headers


MAX_REDIRECTS = 5


def _fetch_once(
    url: str, target: Path, max_bytes: int, headers: dict[str, str], deadline: float
) -> dict[str, str | None] | None:
    """Stream `url` into `target`; None when the server answers 304, else the response's validators."""
    import httpx

    try:
        if time.monotonic() > deadline:
            raise DataSourceError(f"{url}: no complete download within data.download_timeout_s")
        client = httpx.Client(follow_redirects=True, max_redirects=MAX_REDIRECTS, timeout=30)
        with client, client.stream("GET", url, headers=headers) as response:
            if response.status_code == 304 and headers:
                return None
            if response.status_code == 429 or response.status_code >= 500:
                raise TransientDownloadError(f"HTTP {response.status_code}")
            if response.status_code >= 400:
                raise DataSourceError(f"{url}: HTTP {response.status_code}; check the URL")
            declared = int(response.headers.get("content-length") or 0)
            if declared > max_bytes:
                raise DataSourceError(f"{url}: {declared} bytes exceeds data.max_download_mb")
            atomic_write_bytes_stream(target, _limited(response.iter_bytes(), max_bytes, url, deadline))
            return {"etag": response.headers.get("etag"), "last_modified": response.headers.get("last-modified")}
    except httpx.TooManyRedirects:
        raise DataSourceError(f"{url}: more than {MAX_REDIRECTS} redirects") from None
    except httpx.UnsupportedProtocol as err:
        raise DataSourceError(f"{url}: redirected to an unsupported address ({err}); only http(s)") from None
    except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as err:
        raise TransientDownloadError(f"{type(err).__name__}: {err}") from None


def _limited(chunks: Any, max_bytes: int, url: str, deadline: float) -> Any:
    total = 0
    for chunk in chunks:
        if time.monotonic() > deadline:
            raise DataSourceError(
                f"{url}: still downloading after data.download_timeout_s; raise it or check the server"
            )
        total += len(chunk)
        if total > max_bytes:
            raise DataSourceError(f"{url}: more than {max_bytes} bytes; raise data.max_download_mb to allow it")
        yield chunk


def read_hub_dataset(dataset_id: str, revision: str | None, subset: str | None, split: str) -> list[Record]:
    """A split of a Hugging Face Hub dataset through `datasets` (online; cached by `datasets` afterwards)."""
    import datasets

    try:
        loaded = datasets.load_dataset(dataset_id, name=subset, revision=revision, split=split)
    except Exception as err:  # noqa: BLE001 - datasets raises many types; all end the same way for the user
        first_line = _first_line(err)
        raise DataSourceError(
            f"{dataset_id}: could not load split {split!r} from the Hugging Face Hub ({first_line}); offline "
            "machines can use data.source=embedded or a local file"
        ) from None
    return [json_safe(dict(record)) for record in loaded]


def json_safe(value: Any) -> Any:
    """`value` as JSON data, so rows can be stored (raw.jsonl) and gated: Parquet and hub columns arrive as
    timestamps, dates, decimals, bytes or numpy scalars. Text-like values become text (timestamps in ISO 8601,
    decimals exactly, UTF-8 bytes decoded); what is not text (other bytes, images, unknown objects) becomes a
    small object naming it, which the data gate reports as "not text" with its row number."""
    import datetime as dt
    import decimal

    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | dt.timedelta):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"bytes": len(value)}
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return json_safe(value.tolist())
    return {"unsupported": type(value).__name__}
