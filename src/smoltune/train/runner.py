"""The parent side of training: run `smoltune.train.worker` in a subprocess (or torchrun's N data-parallel
ones, smoltune.train.distributed) and relay its progress.

from smoltune.train.runner import train_in_subprocess
result = train_in_subprocess(TrainSpec(...), on_step=print)
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import IO

from smoltune.config import TrainConfig
from smoltune.errors import ConfigError, StorageError, TrainingError
from smoltune.files import atomic_write_json
from smoltune.records import TrainResult
from smoltune.train.distributed import join_commands, launch_command, launch_env
from smoltune.train.spec import RESULT_FILE, TrainSpec, finished_result
from smoltune.train.worker import ERROR_PREFIX, STEP_PREFIX

STDERR_TAIL_LINES = 40
_log = logging.getLogger("smoltune")


def _relay_stderr(stream: IO[str], tail: deque[str]) -> None:
    """Relay the worker's stderr and keep its tail for the error message. Under torchrun the launcher's own
    report ("ChildFailedError ...") comes last and says nothing of the cause, so a rank's lines
    (torchrun prefixes them "[rankN]:") are what the tail keeps once there are any."""
    ranks: deque[str] = deque(maxlen=tail.maxlen)
    for line in stream:
        sys.stderr.write(line)
        if line.startswith("[rank"):
            ranks.append(line)
        tail.append(line)
    if ranks:
        tail.clear()
        tail.extend(ranks)


def train_in_subprocess(
    spec: TrainSpec,
    on_step: Callable[[dict], None] | None = None,
    env: dict[str, str] | None = None,
    slot: AbstractContextManager | None = None,
) -> TrainResult:
    """Train in a fresh Python process (torchrun's N with `train.num_processes` > 1) while holding `slot`
    (the train task passes its machine's training slot; the library itself takes none: how many trainings
    share a machine is the orchestrator's decision); returns the result, or raises TrainingError with the
    stderr tail. A rerun after a crash resumes from the last
    complete checkpoint in `spec.work_dir`."""
    work_dir = Path(spec.work_dir)
    if (finished := finished_result(work_dir)) is not None:
        return finished  # finished before: same inputs, same code
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_file = atomic_write_json(work_dir / "spec.json", asdict(spec))
    train = TrainConfig.model_validate(spec.config)
    command = launch_command(spec_file, train)
    for node, join in enumerate(join_commands(spec_file, train), start=1):
        _log.warning("training waits for machine %d of %d to join; run there: %s", node + 1, train.nnodes, join)
    with slot if slot is not None else nullcontext():
        run_worker(command, work_dir, on_step, launch_env(train, env))
    return load_result(work_dir)


def run_worker(command: list[str], work_dir: Path, on_step: Callable[[dict], None] | None, env: dict) -> None:
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    reported: list[dict] = []
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
        if error["type"] == "StorageError":  # the disk, not the training: exit 9 like any other stage's
            raise StorageError(error["message"])
        raise TrainingError(error["message"])
    if proc.returncode != 0:
        raise TrainingError(
            f"training process exited with status {proc.returncode}; rerunning resumes from the last complete "
            f"checkpoint in {work_dir / 'checkpoints'}. Last error output:\n{''.join(tail)}"
        )


def load_result(work_dir: Path) -> TrainResult:
    return TrainResult(**json.loads((work_dir / RESULT_FILE).read_text()))
