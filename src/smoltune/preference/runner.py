"""The parent side of the preference stages: run `smoltune.preference.worker` in a fresh process (TRL, torch and
the model stay out of the flow's process; a crash or SIGKILL loses at most the steps since a checkpoint)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path

from smoltune.config import TrainConfig
from smoltune.files import atomic_write_json
from smoltune.preference import worker
from smoltune.preference.spec import REFERENCE_FILE, PreferenceSpec
from smoltune.records import TrainResult
from smoltune.train import prestart
from smoltune.train.distributed import launch_env
from smoltune.train.runner import load_result, run_worker
from smoltune.train.spec import finished_result


@contextmanager
def prestarted_preference() -> Iterator[None]:
    """While the block runs, a preference worker imports in the background; the block's first preference
    process (the reference's, or training's) takes it (smoltune.train.prestart)."""
    with prestart.prestarted(worker.__name__, launch_env(TrainConfig())):
        yield


def run_preference(
    spec: PreferenceSpec, on_step: Callable[[dict], None] | None = None, slot: AbstractContextManager | None = None
) -> TrainResult | Path:
    """Phase 'reference': the scored pairs file; phase 'train': the training's result. Holds `slot` (the
    machine's training slot, from the task) while the process runs."""
    work_dir = Path(spec.work_dir)
    if spec.phase == "train" and (finished := finished_result(work_dir)) is not None:
        return finished
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_file = atomic_write_json(work_dir / "spec.json", asdict(spec))
    # The module itself, imported: the stages' code versions (smoltune.pipeline.versions) then cover the worker
    # and everything it runs (training, the fast paths), as the SFT runner's import of its worker does.
    command = prestart.worker_command(worker.__name__, spec_file)
    with slot if slot is not None else nullcontext():
        run_worker(command, work_dir, on_step, launch_env(TrainConfig()))
    return work_dir / REFERENCE_FILE if spec.phase == "reference" else load_result(work_dir)
