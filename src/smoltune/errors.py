"""One error model: every failure a user can act on is a `SmoltuneError` whose message names the file, the
rows or the field and what to change. The CLI prints it in a few lines (no traceback unless `--debug`) and
exits with its class's code; a Prefect run fails with the same message as its state message.

    smoltune run --set data.source=missing.jsonl; echo $?     # error: missing.jsonl: no such file ... / 4

| code | class | what went wrong |
|---|---|---|
| 2 | ConfigError | the job's configuration (a field, a YAML file, an override, a path in it) |
| 3 | DataError | the rows: the Great Expectations gate failed, the split left nothing to train on, bad eval prompts |
| 4 | SourceError | a data or model source cannot be reached or read (missing file, HTTP error, hub unreachable) |
| 5 | ModelError | the model does not fit the job (e.g. LoRA target modules it does not have) |
| 6 | TrainingError | training failed or diverged (NaN/inf loss); the worker's last error lines are included |
| 7 | ExportError | the merged model or the GGUF file could not be written |
| 8 | BusyError | another run held a lock (a stage being computed, the machine's training slot) for too long |
| 9 | StorageError | the file system refused (no space, permission, read-only, a file where a folder belongs) |
| 10 | PublishError | publishing to the Hub failed (offline, token refused, no rights); the run itself is complete |
| 130 / 143 | StoppedError | SIGINT / SIGTERM stopped training at a step boundary, checkpoint written; rerun resumes |
| 1 | anything else | a bug: the traceback is printed, please report it |
"""

from __future__ import annotations

import errno
import os

from smoltune.redaction import redact


class SmoltuneError(Exception):
    """A failure with a message the user can act on; URL credentials and tokens in it are redacted, since it is
    printed, logged and stored as the Prefect run's state message."""

    exit_code = 1

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(redact(str(message)), *args)


class ConfigError(SmoltuneError, ValueError):
    """A configuration that cannot run; the message lists every problem found."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} has {len(problems)} problem(s):\n{lines}")


class DataError(SmoltuneError, ValueError):
    """The rows cannot be trained or evaluated on as they are."""

    exit_code = 3


class SourceError(SmoltuneError, ValueError):
    """A data or model source that cannot be reached or read."""

    exit_code = 4


class ModelError(SmoltuneError, RuntimeError):
    """The resolved model does not fit the job."""

    exit_code = 5


class TrainingError(SmoltuneError, RuntimeError):
    """Training failed or diverged."""

    exit_code = 6


class ExportError(SmoltuneError, RuntimeError):
    """An export could not be written."""

    exit_code = 7


class BusyError(SmoltuneError, TimeoutError):
    """Another run held a lock longer than the wait allowed."""

    exit_code = 8


class StorageError(SmoltuneError, OSError):
    """The file system refused a read or write, whichever library met it (Python, safetensors, torch.save)."""

    exit_code = 9


# errno -> what to tell the user; the messages libraries wrap an OS error in carry the same strerror text.
_STORAGE = {
    errno.ENOSPC: "no space left on the device; free some, or point output.cache_dir / output.runs_dir elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some, or point output.cache_dir / output.runs_dir elsewhere",
    errno.EACCES: "permission denied; make it writable for this user or choose another folder",
    errno.EPERM: "operation not permitted; make it writable for this user or choose another folder",
    errno.EROFS: "read-only file system; point output.runs_dir / output.cache_dir at a writable folder",
    errno.ENOTDIR: "a file is where a folder belongs; move it away or choose another folder",
    errno.EISDIR: "a folder is where a file belongs; move it away or choose another path",
    errno.ENAMETOOLONG: "the path is too long for the file system; choose a shorter folder",
}


def storage_error(err: BaseException) -> StorageError | None:
    """`err` as one StorageError line when it (or an exception it wraps) is a file-system refusal, else None.
    safetensors and torch.save raise their own types around the OS error, so the text is searched as well."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _STORAGE:
            where = f" ({current.filename})" if current.filename else ""
            return StorageError(f"{_STORAGE[current.errno]}{where}")
        text = str(current)
        first = text.splitlines()[0][:200] if text else type(current).__name__
        for code, advice in _STORAGE.items():
            if os.strerror(code) in text:
                return StorageError(f"{advice} ({first})")
        if "file write failed" in text:  # torch.save's writer does not keep the OS error
            return StorageError(f"a write failed, most often for lack of space: {_STORAGE[errno.ENOSPC]} ({first})")
        current = current.__cause__ or current.__context__
    return None


class StoppedError(SmoltuneError, RuntimeError):
    """Training was stopped by a signal (a pod stop, a Prefect cancellation, Ctrl-C) after saving a checkpoint.
    The exit code is the shell's for that signal: 128 + its number (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, message: object, signum: int | None = None) -> None:
        super().__init__(message)
        # Rebuilt from the message alone (Prefect's JSON result serializer does that): the signal it names.
        self.signum = signum if signum is not None else (2 if "SIGINT" in str(message) else 15)
        self.exit_code = 128 + signum

    def __reduce__(self) -> tuple:
        # Pickled with the signal (the default rebuilds from the message alone and fails): a Prefect run's
        # Cancelled state carries it as data, and a Dask worker's training returns it to the flow.
        return type(self), (self.args[0] if self.args else "", self.signum)


class PublishError(SmoltuneError, RuntimeError):
    """Publishing to the Hugging Face Hub failed. A code of its own (no other kind fits: the Hub is a destination,
    not a source, and nothing local is missing) tells a script that the run folder is complete and only
    `smoltune push` needs repeating."""

    exit_code = 10


USER_ERRORS = (
    ConfigError, DataError, SourceError, ModelError, TrainingError, ExportError, BusyError, StorageError, StoppedError,
    PublishError,
)  # fmt: skip
