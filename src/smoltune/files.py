"""File helpers shared by every stage: content hashes, atomic writes, sizes.

Writes go to a temporary sibling first and are renamed into place, so a crash never leaves a half-written
summary or model folder that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
_log = logging.getLogger("smoltune")
# How long a run waits for a lock another run holds (a stage it computes, the training slot): a training can
# take hours, so the default is long, but never forever; SMOLTUNE_LOCK_WAIT_S changes it.
LOCK_WAIT_S = float(os.environ.get("SMOLTUNE_LOCK_WAIT_S", 6 * 3600))
LOCK_POLL_S = 30.0


@contextmanager
def waiting_lock(
    path: str | Path, what: str, limit_s: float | None = None, poll_s: float = LOCK_POLL_S, slots: int = 1
) -> Iterator[None]:
    """Hold the file lock `path` (with `slots` > 1: whichever of `path`.0 ... `path`.N-1 is free); while other
    processes hold it, log every `poll_s` how long this run has waited, and give up with BusyError after
    `limit_s` (default LOCK_WAIT_S). The OS releases a killed holder's lock at once."""
    from filelock import FileLock, Timeout

    from smoltune.errors import BusyError

    limit = LOCK_WAIT_S if limit_s is None else limit_s
    paths = [str(path)] if slots == 1 else [f"{path}.{i}" for i in range(slots)]
    locks, started, reported = [FileLock(p) for p in paths], time.monotonic(), 0.0
    while True:
        for lock in locks:
            try:
                lock.acquire(timeout=0)
                break
            except Timeout:
                continue
        else:
            waited = time.monotonic() - started
            if waited >= limit:
                raise BusyError(
                    f"waited {waited:.0f} s for {what} ({path}), which another run holds; if no other run is "
                    "active, delete the lock file"
                ) from None
            if waited - reported >= poll_s:
                _log.warning("waiting for %s: another run has held it for %.0f s", what, waited)
                reported = waited
            time.sleep(min(0.2, max(limit - waited, 0.0)))
            continue
        break
    try:
        yield
    finally:
        lock.release()


def smoltune_home() -> Path:
    """Machine-wide cache (converted models, downloads): `$SMOLTUNE_HOME`, default `~/.cache/smoltune`."""
    return Path(os.environ.get("SMOLTUNE_HOME", Path.home() / ".cache" / "smoltune"))


def link_or_copy(source: Path, target: Path) -> Path:
    """`target` holding `source`'s bytes as they are now: a hard link (no copy, and a later atomic replace of
    `source` leaves it alone), or a copy where the two sit on different file systems."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_dir(path: str | Path) -> str:
    """Hex sha256 over every file's relative path and content, in a stable order."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def fingerprint(data: Any) -> str:
    """A short stable hash of JSON-able data (keys sorted): used to name content-addressed folders."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:20]


def dir_size_mb(path: str | Path) -> float:
    """Total size of the files under `path` in MiB."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**20


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` so readers see either the old file or the whole new one."""
    return atomic_write_bytes_stream(path, [text.encode("utf-8")])


def atomic_write_bytes_stream(path: str | Path, chunks: Iterable[bytes]) -> Path:
    """Write byte chunks to `path` atomically; an error mid-stream leaves no partial file behind."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; results are ordinary readable files
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _json_line(row: dict[str, Any]) -> str:
    line = json.dumps(row, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (invalid unicode a source may carry) cannot be UTF-8; escape them so the row
        # survives unchanged and the data checks can report it.
        line = json.dumps(row)
    return line + "\n"


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    return atomic_write_text(path, "".join(_json_line(r) for r in rows))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder that replaces `path` only if the block finishes without error."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary shared folder
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
