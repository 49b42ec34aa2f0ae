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
| 9 | (OSError: no space) | the disk filled up; incomplete stage folders are never trusted, rerun after freeing space |
| 1 | anything else | a bug: the traceback is printed, please report it |
"""

from __future__ import annotations

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


USER_ERRORS = (ConfigError, DataError, SourceError, ModelError, TrainingError, ExportError, BusyError)
