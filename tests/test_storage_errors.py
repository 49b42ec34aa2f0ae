"""One error model for the file system: a full disk, permission, a read-only file system or a file where a folder
belongs end in one line and exit 9, whichever library met them (Python, safetensors, torch.save)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import typer

from smoltune.cli import user_errors
from smoltune.config import OutputConfig
from smoltune.errors import StorageError, storage_error
from smoltune.pipeline.runs import create_run_dir
from smoltune.train.worker import ERROR_PREFIX, run_reporting


def library_error(message: str) -> Exception:
    """How safetensors and torch.save report an OS error: their own exception type around its text."""
    return type("SafetensorError", (Exception,), {})(message)


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/c/x.bin"), "no space left on the device"),
        (PermissionError(errno.EACCES, "Permission denied", "/c"), "permission denied"),
        (OSError(errno.EROFS, "Read-only file system", "/c"), "read-only file system"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/c/f/x"), "a file is where a folder belongs"),
        (
            library_error(
                "Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                '"No space left on device" })'
            ),
            "no space left",
        ),  # fmt: skip
        (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), "most often for lack"),
    ],
)
def test_every_file_system_refusal_is_one_storage_error(err: Exception, expected: str) -> None:
    found = storage_error(err)
    assert isinstance(found, StorageError) and found.exit_code == 9 and expected in str(found)
    try:  # wrapped by another exception (raise ... from err): still found
        raise ValueError("saving failed") from err
    except ValueError as outer:
        assert expected in str(storage_error(outer))


def test_other_errors_are_not_storage_errors() -> None:
    assert storage_error(ValueError("bad value")) is None
    assert storage_error(OSError(errno.ECONNREFUSED, "Connection refused")) is None


def test_a_file_where_the_runs_folder_belongs_ends_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "runs").write_text("a file, not a folder")
    with pytest.raises(typer.Exit) as exit_, user_errors():
        create_run_dir(OutputConfig(runs_dir=str(tmp_path / "runs"), run_name="r1"))
    assert exit_.value.exit_code == 9
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: a file is where a folder belongs")


def test_the_training_worker_reports_a_full_disk_from_a_library(capsys: pytest.CaptureFixture) -> None:
    def save() -> None:
        raise library_error("I/O error: No space left on device (os error 28)")

    assert run_reporting(save) == 9
    reported = json.loads(capsys.readouterr().out.split(ERROR_PREFIX, 1)[1])
    assert reported["type"] == "StorageError" and "no space left" in reported["message"]
    with pytest.raises(KeyError):  # a bug stays a bug: its traceback is kept
        run_reporting(lambda: {}["missing"])
