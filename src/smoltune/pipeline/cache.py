"""Per-stage caching you can trust: content-addressed stage folders plus a Prefect cache policy over them.

    FETCH = Stage("fetch_dataset", Fetched, fetch_parts, __name__)
    @task(cache_policy=FETCH.cache_policy(), persist_result=True, result_serializer="json")
    def fetch_dataset_task(data, cache_dir, refresh=False) -> Fetched:
        return FETCH.run(FETCH.task_folder(data=data, cache_dir=cache_dir), compute, refresh)

A stage's key covers what really changes its output: its settings and the identity of its inputs (content
hashes, URL content, hub commits: `smoltune.pipeline.keys`) and the code it runs (`smoltune.pipeline.versions`).
The key names the stage's folder, `<cache_dir>/<stage>/<key>/`, which the stage fills in place; `record.json`
(its typed record) and then `_complete.json` (a token) are written last, so a crash leaves a folder that is
never trusted. A folder is reused only while it is complete and every output its record names still exists.

The Prefect cache key is `<stage>-<key>-<token>`. While the folder is complete its token gives the same key,
so Prefect reports the task Cached without running it. When the folder is incomplete (deleted, never made,
an output removed) a fresh token is reserved, which Prefect has never seen: the stage runs again.

The key is computed once per task run, by the cache policy, which hands the folder (or the error that
stopped it) to the task run it computed it for (`Stage.task_folder`): hashing inputs, hub lookups and a
URL's conditional request happen once, and the folder the task fills is the one its Prefect key names.
Only a task run that was handed nothing (outside Prefect, or Prefect ran a task whose folder was complete
because its own result was gone) computes the folder itself.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from prefect.cache_policies import CachePolicy
from pydantic import ValidationError

from smoltune.files import atomic_write_json, atomic_write_text, fingerprint, waiting_lock
from smoltune.pipeline.versions import stage_code_version
from smoltune.records import StageRecord

COMPLETE = "_complete.json"
RECORD = "record.json"

R = TypeVar("R", bound=StageRecord)
PartsFn = Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]


def _complete(folder: Path, record_type: type[R]) -> tuple[str, R] | None:
    """(token, record) of a complete folder whose record names only outputs that exist; else None."""
    if not (folder / COMPLETE).is_file() or not (folder / RECORD).is_file():
        return None
    try:
        token = json.loads((folder / COMPLETE).read_text())["token"]
        record = record_type.model_validate_json((folder / RECORD).read_text())
    except (ValidationError, json.JSONDecodeError, KeyError, TypeError):
        return None  # a torn marker, or a record of another shape (older code): recompute
    if not all(Path(p).exists() for p in record.outputs()):
        return None  # e.g. the adapter or the converted model was deleted
    return token, record


def load_record(folder: Path, record_type: type[R]) -> R | None:
    complete = _complete(folder, record_type)
    return complete[1] if complete else None


def complete_token(folder: Path, record_type: type[StageRecord]) -> str | None:
    complete = _complete(folder, record_type)
    return complete[0] if complete else None


def _pending_file(folder: Path) -> Path:
    return folder.parent / f"{folder.name}.pending"


def reserve_token(folder: Path) -> str:
    """A new token for a folder about to be (re)computed; the stage marks the folder with it when done."""
    token = secrets.token_hex(6)
    pending = _pending_file(folder)
    pending.parent.mkdir(parents=True, exist_ok=True)
    pending.write_text(token)
    return token


def _token_for(folder: Path) -> str:
    pending = _pending_file(folder)
    return pending.read_text().strip() if pending.is_file() else secrets.token_hex(6)


def stage_lock(folder: Path) -> AbstractContextManager:
    """One computation per stage folder at a time, across threads and processes: the same job started twice
    at once computes each stage once, and the second run reuses the first's result (waits are logged)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    return waiting_lock(str(folder) + ".lock", f"stage {folder.parent.name}/{folder.name}")


def _clear_for_rerun(folder: Path, resumable: bool) -> None:
    """An incomplete folder is never trusted. A resumable stage (training) keeps one that never finished,
    whose checkpoints it resumes from; a folder that had finished but lost an output is rebuilt whole."""
    if not folder.exists():
        return
    if resumable and not (folder / RECORD).exists():
        return
    shutil.rmtree(folder)


def run_stage(
    folder: Path,
    record_type: type[R],
    compute: Callable[[Path], R],
    refresh: bool = False,
    resumable: bool = False,
) -> R:
    """The stage's record: read from a complete folder (unless `refresh`), or computed into `folder`."""
    if not refresh and (record := load_record(folder, record_type)) is not None:
        return record
    with stage_lock(folder):
        if not refresh and (record := load_record(folder, record_type)) is not None:
            return record  # finished by a concurrent run meanwhile
        if refresh and folder.exists():
            shutil.rmtree(folder)
        _clear_for_rerun(folder, resumable)
        folder.mkdir(parents=True, exist_ok=True)
        record = compute(folder).model_copy(update={"key": folder.name, "folder": str(folder)})
        missing = [p for p in record.outputs() if not Path(p).exists()]
        if missing:
            raise RuntimeError(f"stage {folder.parent.name} finished without writing {missing}")
        atomic_write_text(folder / RECORD, record.model_dump_json(indent=2))
        atomic_write_json(folder / COMPLETE, {"token": _token_for(folder)})
        return record


@dataclass(frozen=True)
class Stage(Generic[R]):
    """One pipeline stage: its name, its record type, what its key covers, and the module of its task (whose
    import closure is the code it runs)."""

    name: str
    record: type[R]
    parts: PartsFn
    module: str
    resumable: bool = False

    def key(self, parts: dict[str, Any]) -> str:
        return fingerprint({"stage": self.name, "code": stage_code_version(self.module), **parts})

    def folder(self, **inputs: Any) -> Path:
        """The stage folder for these task inputs: what the task writes and what the cache policy keys on."""
        cache_dir, parts = self.parts(inputs)
        return Path(cache_dir).resolve() / self.name / self.key(parts)

    def task_folder(self, cache_dir: str, **inputs: Any) -> Path:
        """The running task's stage folder: the one its cache policy computed for this task run (or the error
        that stopped it), computed here only when the policy handed over nothing."""
        handed = _take_handoff()
        if isinstance(handed, Exception):
            raise handed
        return handed or self.folder(cache_dir=cache_dir, **inputs)

    def run(self, folder: Path, compute: Callable[[Path], R], refresh: bool = False) -> R:
        return run_stage(folder, self.record, compute, refresh, self.resumable)

    def cache_policy(self) -> StageCache:
        return StageCache(stage=self)


@dataclass(kw_only=True)  # CachePolicy's own fields come first: positional arguments would land on them
class StageCache(CachePolicy):
    """Prefect cache policy for one stage."""

    stage: Stage | None = None

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kw: Any
    ) -> str | None:
        assert self.stage is not None
        run_id = task_ctx.task_run.id if task_ctx is not None else None
        try:
            folder = self.stage.folder(**inputs)
        except Exception as err:  # noqa: BLE001 - handed to the task, which raises it (a bug keeps its traceback)
            # Raised once, by the task: a 404 or a sha256 mismatch costs one request, not two.
            _hand_over(run_id, err)
            return None  # no caching for this call
        # A refresh, like an incomplete folder, gets a key Prefect has never seen: the task runs again.
        token = None if inputs.get("refresh") else complete_token(folder, self.stage.record)
        if token is None:
            _hand_over(run_id, folder)  # the task will run: it fills this folder, without computing it again
        return f"{self.stage.name}-{folder.name}-{token or reserve_token(folder)}"


# What a cache policy computed, for the task run it computed it for; taken (and so cleared) by that task run
# when it starts. Only handed over when the task will run (an incomplete folder or an error): a complete
# folder is a Prefect cache hit, whose task never starts to take it.
_handoffs: dict[Any, Path | Exception] = {}


def _hand_over(run_id: Any, value: Path | Exception) -> None:
    if run_id is not None:
        _handoffs[run_id] = value


def _take_handoff() -> Path | Exception | None:
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    return _handoffs.pop(context.task_run.id, None) if context is not None else None
