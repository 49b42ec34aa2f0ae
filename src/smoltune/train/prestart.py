"""Start a training process before its spec exists, so that its imports overlap the stages before training.

    with prestarted("smoltune.train.worker", env):                      # the flow, before its data stages
        ...                                                             # fetch, gate, prepare
        run_worker(worker_command("smoltune.train.worker", spec), ...) # takes the waiting process

Cost model: a training process spends ~10 s (2-core AMD EPYC, warm disk cache) importing torch, datasets,
transformers and TRL before it reads its spec, and the stages before training (the gate, prepare) keep the
flow's process on one core for longer than that. Started with the flow, the worker imports on the other core
and waits on stdin for its spec file's path; training then begins that much sooner. When training is cached or
the run fails first, the waiting process is killed: it has written nothing. The price in that case: one core
busy for those seconds and ~1.3 GB of memory while it lasts. A parent that dies closes the pipe, and the
worker exits at the end of its imports (EOF, or a broken pipe, instead of a path). Measured with the smoke job
through the CLI (2-core AMD EPYC with AVX-512): the train stage 15.7 s -> 7.2 s, the whole run 58.4 s -> 48.9 s.
`smoltune run` starts it even earlier, before it imports and starts Prefect (a block inside a block that started
one uses that one): on a retrain every stage before training is cached and takes well under a second, so only
Prefect's start-up is left to hide the imports behind.

Written by hand: forking a process that has already imported torch is unsafe (OpenMP's threads do not survive a
fork) and would put those imports in the flow's own process; no library offers a waiting, spawned worker.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WAIT_FOR_SPEC = "-"  # the worker's argument instead of a spec file: read the path from stdin after importing
READY_PREFIX = "SMOLTUNE_READY "  # the waiting worker's first stdout line: its environment after the imports
_lock = threading.Lock()


@dataclass
class _Waiting:
    module: str
    env: dict[str, str]
    own_group: bool
    popen: subprocess.Popen
    # Its stderr lines as they come (None: the end), drained from the start: a worker that writes much while
    # importing must never block on a full pipe while the parent waits for its ready line on stdout.
    stderr: queue.Queue[str | None]


def _drain(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _lines(lines: queue.Queue[str | None]) -> Iterator[str]:
    while (line := lines.get()) is not None:
        yield line


_waiting: dict[str, _Waiting] = {}  # worker module -> the process waiting for its spec


def worker_command(module: str, spec_file: str | Path) -> list[str]:
    """How a single-process worker is run: `python -m MODULE SPEC.json` (or `-`: the path comes on stdin)."""
    return [sys.executable, "-m", module, str(spec_file)]


def own_group() -> bool:
    """Whether a worker started from this thread gets its own process group: where signals can be relayed
    (the main thread; smoltune.train.runner.relayed_stop_signals), a terminal's Ctrl-C then reaches it once;
    elsewhere (a Dask thread) it stays in ours and gets the signal directly."""
    return threading.current_thread() is threading.main_thread()


def start(command: list[str], env: dict[str, str], waiting: bool = False) -> subprocess.Popen:
    """The worker process, its output piped to this one (and its stdin, for a waiting one)."""
    return subprocess.Popen(
        command, stdin=subprocess.PIPE if waiting else None, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, process_group=0 if own_group() else None,
    )  # fmt: skip


@contextmanager
def prestarted(module: str, env: dict[str, str]) -> Iterator[None]:
    """A `module` worker importing in the background while the block runs; `take` hands it to the first
    matching run inside the block, and one still waiting at the block's end is killed. Inside a block that
    already started one (the CLI starts it before Prefect, the flow's block then finds it waiting), the
    waiting one is used and stays the outer block's: `take` still checks its environment."""
    with _lock:
        outer = _waiting.get(module)
    # The outer's variables unchanged (what the flow's imports add is for `take` to judge, once it is ready).
    if outer is not None and outer.own_group == own_group() and all(env.get(k) == v for k, v in outer.env.items()):
        yield
        return
    popen = start(worker_command(module, WAIT_FOR_SPEC), env, waiting=True)
    entry = _Waiting(module, env, own_group(), popen, queue.Queue())
    threading.Thread(target=_drain, args=(popen.stderr, entry.stderr), daemon=True).start()
    with _lock:
        earlier = _waiting.pop(module, None)
        _waiting[module] = entry
    if earlier is not None:
        _discard(earlier)
    try:
        yield
    finally:
        with _lock:
            left = _waiting.pop(module) if _waiting.get(module) is entry else None
        if left is not None:
            _discard(left)


def take(command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, Iterator[str]] | None:
    """The waiting worker for `command` (a single-process `worker_command`), given its spec, and its stderr
    lines, if one was started with the same environment from a thread of the same kind and is ready; else None."""
    if len(command) != 4 or command[:2] != [sys.executable, "-m"]:
        return None  # torchrun's launcher, or a command of another shape: started afresh
    with _lock:
        entry = _waiting.pop(command[2], None)
    if entry is None:
        return None
    try:
        if entry.own_group != own_group() or not _ready_with(entry, env):
            _discard(entry)
            return None
        entry.popen.stdin.write(command[3] + "\n")  # type: ignore[union-attr]
        entry.popen.stdin.close()  # type: ignore[union-attr]
    except OSError:  # it died between the check and the write: start afresh
        _discard(entry)
        return None
    except BaseException:  # Ctrl-C while waiting for its imports: it is no one's now
        _discard(entry)
        raise
    return entry.popen, _lines(entry.stderr)


def _ready_with(entry: _Waiting, env: dict[str, str]) -> bool:
    """Waits for the worker's imports to end; whether its environment then is what a worker started now with
    `env` would have: every variable it started with is in `env` unchanged, and every variable added to `env`
    since (libraries imported by the flow set some: scikit-learn's KMP_*, torch's TORCHINDUCTOR_CACHE_DIR) its
    own imports have set to the same value. A variable the flow set itself since (a token, a thread count)
    fails this, and a fresh worker is started. Not seen: a variable a library sets while loading that another
    library reads while loading (a fresh worker would have it from its start); none of the ones set here is
    read that way (KMP_DUPLICATE_LIB_OK matters on macOS only; the rest are read when used)."""
    for line in entry.popen.stdout:  # type: ignore[union-attr]
        if READY_PREFIX in line:  # after anything an import printed without a newline
            try:
                after_imports = json.loads(line[line.index(READY_PREFIX) + len(READY_PREFIX) :])
            except ValueError:
                return False
            return all(env.get(k) == v for k, v in entry.env.items()) and all(
                after_imports.get(k) == v for k, v in env.items() if k not in entry.env
            )
        sys.stderr.write(line)  # what the imports printed: relayed as a worker's output always is
    return False  # it ended before it was ready


def _discard(entry: _Waiting) -> None:
    """Kill a waiting worker that will not train: it has only imported, so nothing is lost."""
    entry.popen.kill()
    entry.popen.wait()  # reaped; what it printed while importing is dropped with its pipes
    for stream in (entry.popen.stdin, entry.popen.stdout):
        if stream is not None:
            try:
                stream.close()
            except OSError:  # stdin's buffer could not be flushed to a dead process
                pass
