"""Per-stage caching you can trust: content-addressed stage folders plus a Prefect cache policy over them.

    @task(cache_policy=StageCache(stage="prepare_dataset", parts=prepare_parts), persist_result=True)
    def prepare_dataset_task(...): return run_stage(folder, compute)

A stage's key covers what really changes its output: the stage's own config, the content hash of its inputs
(never just a path) and the code version (`smoltune.code_version()`; Prefect's TASK_SOURCE would only see the
thin task). The key names the stage's folder, `<cache_dir>/<stage>/<key>/`, which holds the output files and
`result.json`, and is marked complete (with a token) only after everything was written.

The Prefect cache key is `<stage>-<key>-<token>`. While the folder is complete, its token gives the same
key, so Prefect reports the task Cached without running it. When the folder is missing (deleted, or never
made), a fresh token is reserved, which Prefect has never seen: the stage runs again instead of returning
a result that points at files that are gone.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from prefect.cache_policies import CachePolicy

from smoltune.files import atomic_dir, atomic_write_json, fingerprint

COMPLETE = "_complete.json"
RESULT = "stage_result.json"  # apart from training's own result.json

PartsFn = Callable[[dict[str, Any]], tuple[Path, dict[str, Any]]]


def stage_key(stage: str, parts: dict[str, Any]) -> str:
    from smoltune import code_version

    return fingerprint({"stage": stage, "code": code_version(), **parts})


def stage_folder(cache_dir: str | Path, stage: str, parts: dict[str, Any]) -> Path:
    return Path(cache_dir).resolve() / stage / stage_key(stage, parts)


def folder_for(stage: str, parts: PartsFn, **inputs: Any) -> Path:
    """The stage folder for these task inputs: what the task writes and what StageCache keys on."""
    cache_dir, key_parts = parts(inputs)
    return stage_folder(cache_dir, stage, key_parts)


def complete_token(folder: Path) -> str | None:
    """The folder's token when it is complete and every path its result relies on still exists."""
    marker = folder / COMPLETE
    if not marker.is_file() or not (folder / RESULT).is_file():
        return None
    requires = json.loads((folder / RESULT).read_text()).get("requires", [])
    if not all(Path(p).exists() for p in requires):
        return None  # e.g. the converted model under $SMOLTUNE_HOME was deleted
    return json.loads(marker.read_text())["token"]


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


def stage_lock(folder: Path) -> FileLock:
    """One computation per stage folder at a time, across threads and processes: the same job started twice
    at once computes each stage once, and the second run reuses the first's result."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder) + ".lock")


def run_stage(folder: Path, compute: Callable[[Path], dict[str, Any]], refresh: bool = False) -> dict[str, Any]:
    """The stage's result: read from a complete folder (unless `refresh`), or computed into a temporary folder
    that replaces `folder` only once `compute` returned (a crash leaves nothing that looks finished)."""
    if not refresh and complete_token(folder) is not None:
        return json.loads((folder / RESULT).read_text())
    with stage_lock(folder):
        if not refresh and complete_token(folder) is not None:  # finished by a concurrent run meanwhile
            return json.loads((folder / RESULT).read_text())
        return _compute_stage(folder, compute)


def _compute_stage(folder: Path, compute: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    token = _token_for(folder)
    with atomic_dir(folder) as tmp:
        result = compute(tmp)
        # Paths inside the result point at the final folder, not the temporary one.
        text = json.dumps({**result, "stage_dir": str(tmp)}).replace(str(tmp), str(folder))
        (tmp / RESULT).write_text(text)
        atomic_write_json(tmp / COMPLETE, {"token": token})
    return json.loads(text)


def mark_complete(folder: Path, result: dict[str, Any]) -> dict[str, Any]:
    """For stages that build their folder in place (training resumes from checkpoints inside it)."""
    result = {**result, "stage_dir": str(folder)}
    atomic_write_json(folder / RESULT, result)
    atomic_write_json(folder / COMPLETE, {"token": _token_for(folder)})
    return result


@dataclass(kw_only=True)  # CachePolicy's own fields come first: positional arguments would land on them
class StageCache(CachePolicy):
    """Prefect cache policy for one stage; `parts` maps the task's inputs to (cache dir, key parts)."""

    stage: str = ""
    parts: PartsFn | None = None

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kw: Any) -> str:
        folder = folder_for(self.stage, self.parts, **inputs)  # type: ignore[arg-type]
        # A refresh, like a missing folder, gets a key Prefect has never seen: the task runs again.
        token = None if inputs.get("refresh") else complete_token(folder)
        return f"{self.stage}-{folder.name}-{token or reserve_token(folder)}"
