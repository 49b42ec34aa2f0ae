"""The parent side of training: run `smoltune.train.worker` in a subprocess and relay its progress.

from smoltune.train.runner import train_in_subprocess
result = train_in_subprocess(TrainSpec(...), on_step=print)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import IO

from smoltune.errors import ConfigError, TrainingError
from smoltune.files import atomic_write_json
from smoltune.train.spec import RESULT_FILE, TrainResult, TrainSpec, finished_result
from smoltune.train.worker import ERROR_PREFIX, STEP_PREFIX

STDERR_TAIL_LINES = 40


def _relay_stderr(stream: IO[str], tail: deque[str]) -> None:
    for line in stream:
        sys.stderr.write(line)
        tail.append(line)


def train_in_subprocess(
    spec: TrainSpec, on_step: Callable[[dict], None] | None = None, env: dict[str, str] | None = None
) -> TrainResult:
    """Train in a fresh Python process; returns its result, or raises TrainingError with its stderr tail.
    A rerun after a crash resumes from the last complete checkpoint in `spec.work_dir`."""
    work_dir = Path(spec.work_dir)
    if (finished := finished_result(work_dir)) is not None:
        return finished  # finished before: same inputs, same code
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_file = atomic_write_json(work_dir / "spec.json", asdict(spec))
    with machine_training_lock():
        _run_worker(spec_file, work_dir, on_step, env)
    return load_result(work_dir)


def machine_training_lock() -> AbstractContextManager:
    """One training at a time on this machine (two would share the same cores and distort each other's
    figures); others wait their turn. SMOLTUNE_PARALLEL_TRAINING=1 lifts it, e.g. on a multi-GPU host."""
    from smoltune.files import smoltune_home, waiting_lock

    if os.environ.get("SMOLTUNE_PARALLEL_TRAINING") == "1":
        return nullcontext()
    smoltune_home().mkdir(parents=True, exist_ok=True)
    return waiting_lock(smoltune_home() / "training.lock", "this machine's training slot (one training at a time)")


def _run_worker(spec_file: Path, work_dir: Path, on_step: Callable[[dict], None] | None, env: dict | None) -> None:
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    reported: list[str] = []
    command = [sys.executable, "-m", "smoltune.train.worker", str(spec_file)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        relay = threading.Thread(target=_relay_stderr, args=(proc.stderr, tail), daemon=True)
        relay.start()
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith(STEP_PREFIX):
                if on_step is not None:
                    on_step(json.loads(line[len(STEP_PREFIX) :]))
            elif line.startswith(ERROR_PREFIX):
                reported.append(json.loads(line[len(ERROR_PREFIX) :]))
            else:
                sys.stderr.write(line)  # library chatter; stdout stays clean for the CLI's last line
        relay.join()
    if proc.returncode != 0 and reported:
        error = reported[-1]
        if error["type"] == "ConfigError" and error.get("problems"):  # a setting this machine cannot run
            raise ConfigError(error["problems"], "train")
        raise TrainingError(error["message"])
    if proc.returncode != 0:
        raise TrainingError(
            f"training process exited with status {proc.returncode}; rerunning resumes from the last complete "
            f"checkpoint in {work_dir / 'checkpoints'}. Last error output:\n{''.join(tail)}"
        )


def load_result(work_dir: Path) -> TrainResult:
    return TrainResult(**json.loads((work_dir / RESULT_FILE).read_text()))
