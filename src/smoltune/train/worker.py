"""The training process: `python -m smoltune.train.worker SPEC.json` (or `-`: the path comes on stdin later).

Trains per the spec (see `smoltune.train.trainer.train`; under torchrun as one rank of a data-parallel
training, smoltune.train.distributed), prints one `SMOLTUNE_STEP {json}` line per logged
step on stdout for the parent to relay, and leaves `result.json` in the work folder. Runs apart from the
flow so that Unsloth's patching stays out of the flow's process and a crash (or SIGKILL) loses at most
the steps since the last checkpoint.
"""

from __future__ import annotations

import faulthandler
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

STEP_PREFIX = "SMOLTUNE_STEP "
ERROR_PREFIX = "SMOLTUNE_ERROR "  # a failure the user can act on, relayed as the parent's error message


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m smoltune.train.worker SPEC.json", file=sys.stderr)
        return 2
    # A crash in native code (a segfault in a kernel) then leaves the Python stack in the stderr the parent
    # relays, instead of a bare "exited with status -11".
    faulthandler.enable()
    from smoltune.train.distributed import Rank
    from smoltune.train.spec import TrainSpec
    from smoltune.train.trainer import load_libraries, train

    if (spec_file := spec_path(args[0], load_libraries)) is None:
        return 0
    spec = TrainSpec(**json.loads(spec_file.read_text()))
    rank = Rank.from_env()

    def on_step(record: dict, max_steps: int) -> None:
        if rank.is_main:  # every rank logs the same (all-reduced) loss; one progress line per step is enough
            print_step(record, max_steps)

    return run_reporting(lambda: train(spec, on_step))


def spec_path(arg: str, load: Callable[[], None]) -> Path | None:
    """The spec file `arg` names; for `-` (a worker started before its spec existed: smoltune.train.prestart)
    `load`'s imports first, then the path read from stdin - None when stdin ends instead (nothing to train)."""
    import os

    from smoltune.train.prestart import READY_PREFIX, WAIT_FOR_SPEC

    if arg != WAIT_FOR_SPEC:
        return Path(arg)
    load()
    # The environment after the imports (some set variables of their own): the parent checks it is the one a
    # fresh worker would have, else it starts one.
    print(READY_PREFIX + json.dumps(dict(os.environ)), flush=True)
    line = sys.stdin.readline().strip()
    return Path(line) if line else None


def run_reporting(work: Any) -> int:
    """Run `work`; a SmoltuneError, or a file-system refusal met by any library (a full disk inside
    safetensors or torch.save), is reported to the parent with its exit code instead of a traceback."""
    from smoltune.errors import SmoltuneError, storage_error

    try:
        work()
    except SmoltuneError as err:
        return report_error(err)
    except Exception as err:
        storage = storage_error(err)
        if storage is None:
            raise
        return report_error(storage)
    return 0


def print_step(record: dict, max_steps: int) -> None:
    """One logged step as the parent (smoltune.train.runner.run_worker) relays it."""
    print(STEP_PREFIX + json.dumps({**record, "max_steps": max_steps}), flush=True)


def report_error(err: Any) -> int:
    """A SmoltuneError as the parent raises it again (a ConfigError with its list of problems); its exit code."""
    problems = getattr(err, "problems", None)
    print(
        ERROR_PREFIX
        + json.dumps(
            {"type": type(err).__name__, "message": str(err), "problems": problems, "exit_code": err.exit_code}
        ),
        flush=True,
    )
    return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
