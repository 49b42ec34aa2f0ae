"""The parent side of training: run `smoltune.train.worker` in a subprocess (or torchrun's N data-parallel
ones, smoltune.train.distributed) and relay its progress.

from smoltune.train.runner import train_in_subprocess
result = train_in_subprocess(TrainSpec(...), on_step=print)
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path

from smoltune.config import TrainConfig
from smoltune.errors import ConfigError, StoppedError, StorageError, TrainingError
from smoltune.files import atomic_write_json
from smoltune.records import TrainResult
from smoltune.train import prestart
from smoltune.train.distributed import WORKER_MODULE, join_commands, launch_command, launch_env
from smoltune.train.spec import RESULT_FILE, TrainSpec, finished_result
from smoltune.train.worker import ERROR_PREFIX, STEP_PREFIX

STDERR_TAIL_LINES = 40
_log = logging.getLogger("smoltune")


def _relay_stderr(stream: Iterable[str], tail: deque[str]) -> None:
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


@contextmanager
def prestarted_training(train: TrainConfig) -> Iterator[None]:
    """While the block runs, a single-process training worker imports in the background and the block's
    training takes it (smoltune.train.prestart); torchrun's processes are started when training begins."""
    if train.world_size != 1:
        yield
        return
    with prestart.prestarted(WORKER_MODULE, launch_env(train)):
        yield


def run_worker(command: list[str], work_dir: Path, on_step: Callable[[dict], None] | None, env: dict) -> None:
    """Run the worker `command` (the one the flow prestarted for it, if any: smoltune.train.prestart), relay its
    steps to `on_step` and its stderr to ours; raise the parent's error for a failure."""
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    reported: list[dict] = []
    # Its process group: prestart.own_group (a terminal's Ctrl-C reaches it once, relayed from the main thread).
    with stopped_while_waiting():
        taken = prestart.take(command, env)
    if taken is not None:
        popen, stderr = taken
    else:
        popen = prestart.start(command, env)
        stderr = popen.stderr
    with popen as proc, relayed_stop_signals(proc) as stopped:
        relay = threading.Thread(target=_relay_stderr, args=(stderr, tail), daemon=True)
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
    if proc.returncode != 0:
        raise worker_error(proc.returncode, reported[-1] if reported else None, stopped, work_dir, "".join(tail))
    if stopped:  # the signal came as training finished: its result is saved (a rerun is a cache hit), but stop
        raise StoppedError(
            f"stopped by {signal.Signals(stopped[0]).name} as training finished; its result is saved and a rerun "
            "continues from it",
            stopped[0],
        )


def worker_error(code: int, error: dict | None, stopped: list[int], work_dir: Path, tail: str) -> Exception:
    """The parent's error for a worker that exited with `code`, after reporting `error` (or nothing)."""
    if error is not None and error["type"] == "ConfigError" and error.get("problems"):  # the machine can't run it
        return ConfigError(error["problems"], "train")
    if error is not None and error["type"] == "StorageError":  # the disk, not the training: exit 9 like any stage
        return StorageError(error["message"])
    if error is not None and error["type"] == "StoppedError":  # stopped at a step boundary, checkpoint saved
        return StoppedError(error["message"], error.get("exit_code", code) - 128)
    if stopped:  # the signal came before training began (loading, tokenising): nothing new to save
        return StoppedError(
            f"training stopped by {signal.Signals(stopped[0]).name} before its first step completed; a rerun "
            f"resumes from the last complete checkpoint in {work_dir / 'checkpoints'} (if any)",
            stopped[0],
        )
    if error is not None:
        return TrainingError(error["message"])
    return TrainingError(
        f"training process exited with status {code}; rerunning resumes from the last complete "
        f"checkpoint in {work_dir / 'checkpoints'}. Last error output:\n{tail}"
    )


@contextmanager
def stopped_while_waiting() -> Iterator[None]:
    """SIGTERM or SIGINT while a prestarted worker finishes its imports (before anything trains) stops the run
    as a signal during training would: StoppedError (the waiting worker is killed by `prestart.take`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        raise StoppedError(f"training stopped by {name} before it began; a rerun starts it", signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def relayed_stop_signals(proc: subprocess.Popen) -> Iterator[list[int]]:
    """While the worker runs, SIGTERM and SIGINT sent to this process (a Kubernetes pod stop or a Prefect
    cancellation signal this process only) are relayed to it, so it stops at a step boundary with a checkpoint
    (smoltune.train.checkpoints.StopOnSignal) instead of running on with the locks already free. Yields the
    signals received. Python delivers signals to the main thread only; elsewhere nothing is installed."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def relay(signum: int, _frame: object) -> None:
        received.append(signum)
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {signum: signal.signal(signum, relay) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def load_result(work_dir: Path) -> TrainResult:
    return TrainResult(**json.loads((work_dir / RESULT_FILE).read_text()))
