"""Crash-safe checkpoints: a checkpoint counts only once a marker says it was written completely.

    python -c "from smoltune.train.checkpoints import latest_complete_checkpoint as f; print(f('.'))"

transformers' `get_last_checkpoint` returns the highest `checkpoint-*` folder whether or not its writing
finished, and saving is not atomic; a process killed mid-save would leave a folder that a resume would load.
The marker is written after the Trainer has saved everything for that step.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from smoltune.errors import StoppedError
from smoltune.files import atomic_write_json

COMPLETE_MARKER = "smoltune_complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class MarkCompleteCheckpoints(TrainerCallback):
    """After each save, mark `checkpoint-<step>` complete (on_save runs once the Trainer has written it). In a
    data-parallel run every rank writes its own RNG state into the folder: rank 0 marks it once all have."""

    def __init__(self, rank: Any = None) -> None:
        from smoltune.train.distributed import Rank

        self.rank = rank or Rank()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from smoltune.train.distributed import barrier

        barrier(self.rank)
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.rank.is_main and folder.is_dir():
            atomic_write_json(folder / COMPLETE_MARKER, {"step": state.global_step})


class NoFinalCheckpoint(TrainerCallback):
    """Skip the checkpoint the Trainer adds after the last step when that step is not a multiple of save_steps:
    the finished adapter (or model) is saved right after training, so that checkpoint is never read."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= state.max_steps and state.global_step % state.save_steps != 0:
            control.should_save = False


class StopOnSignal(TrainerCallback):
    """SIGTERM or SIGINT (a pod stop, a Prefect cancellation, Ctrl-C relayed by the parent) stops training at the
    next step boundary with a checkpoint (marked complete by MarkCompleteCheckpoints, which runs on save).
    `raise_if_stopped`, called after `trainer.train()`, then ends the worker with 128 + the signal and no result,
    so a partial training is never cached as finished and a rerun resumes from that checkpoint. A second signal
    while the step finishes stops the process at once. Installed in the worker's main thread. In a data-parallel
    run all ranks stop at the same step, whichever got the signal (smoltune.train.distributed.agreed_stop)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None  # received by this process
        self.stopped_by: int | None = None  # acted on: this process's signal, or another rank's
        for signum in self.SIGNALS:
            signal.signal(signum, self._note)

    def _note(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:  # asked twice: no more waiting for the step
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.signum = signum

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from smoltune.train.distributed import agreed_stop

        self.stopped_by = agreed_stop(self.signum)
        if self.stopped_by is not None:
            control.should_save = True
            control.should_training_stop = True

    def raise_if_stopped(self, step: int, max_steps: int) -> None:
        """After `trainer.train()`: a training that reached max_steps is finished (its result is saved and the
        parent still stops after it); one stopped earlier ends the worker here (every rank of a data-parallel
        run, the ones that got no signal included, so none goes on to save a result)."""
        signum = self.stopped_by or self.signum
        if signum is not None and step < max_steps:
            name = signal.Signals(signum).name
            raise StoppedError(
                f"training stopped by {name} after step {step}; checkpoint-{step} is saved and a rerun resumes from it",
                signum,
            )


def latest_complete_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    """The highest-step checkpoint folder that carries the completeness marker, or None."""
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return None
    complete = [
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if (match := _CHECKPOINT.match(path.name)) and (path / COMPLETE_MARKER).is_file()
    ]
    return max(complete)[1] if complete else None


def logged_steps(checkpoint: Path) -> list[dict[str, float]]:
    """Per-step records saved in a checkpoint's trainer state, in the shape `StepLog` produces."""
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return [
        {
            "step": int(entry["step"]),
            "loss": float(entry["loss"]),
            "learning_rate": float(entry.get("learning_rate", 0.0)),
            "grad_norm": float(entry.get("grad_norm", float("nan"))),
            "tokens_seen": int(entry.get("num_input_tokens_seen", 0)),
        }
        for entry in history
        if "loss" in entry
    ]
