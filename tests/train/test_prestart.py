"""A training process started before its spec exists (smoltune.train.prestart): taken by the run it was
started for, refused by any other, killed when nothing takes it; the real worker waits and exits cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from smoltune.errors import DataError, StoppedError
from smoltune.train import prestart
from smoltune.train.distributed import WORKER_MODULE
from smoltune.train.runner import run_worker

STAND_IN = "tests.train.prestart_stand_in"


def waiting_process() -> subprocess.Popen:
    return prestart._waiting[STAND_IN].popen


def test_the_run_takes_the_waiting_process(tmp_path: Path) -> None:
    env = dict(os.environ)
    steps: list[dict] = []
    with prestart.prestarted(STAND_IN, env):
        started = waiting_process().pid
        run_worker(prestart.worker_command(STAND_IN, tmp_path / "spec.json"), tmp_path, steps.append, env)
        assert STAND_IN not in prestart._waiting  # taken: a second run would start afresh
    assert steps == [{"pid": started, "spec": str(tmp_path / "spec.json")}]


def test_a_block_inside_one_that_started_a_worker_uses_it_and_leaves_it_to_the_outer(tmp_path: Path) -> None:
    """The CLI starts the worker before Prefect; the flow's own block inside it must neither start a second
    process nor kill the outer one at its end."""
    env = dict(os.environ)
    steps: list[dict] = []
    with prestart.prestarted(STAND_IN, env):
        started = waiting_process()
        with prestart.prestarted(STAND_IN, env):  # a stage that was cached: nothing taken
            assert waiting_process() is started
        assert started.poll() is None and waiting_process() is started  # still waiting, still the outer's
        with prestart.prestarted(STAND_IN, env):  # the next run's flow: its training takes the outer's worker
            run_worker(prestart.worker_command(STAND_IN, tmp_path / "spec.json"), tmp_path, steps.append, env)
    assert steps == [{"pid": started.pid, "spec": str(tmp_path / "spec.json")}]


def test_a_block_inside_with_other_variables_starts_its_own_worker() -> None:
    with prestart.prestarted(STAND_IN, {**os.environ, "OMP_NUM_THREADS": "2"}):
        outer = waiting_process()
        with prestart.prestarted(STAND_IN, {**os.environ, "OMP_NUM_THREADS": "1"}):  # a thread count changed since
            assert waiting_process() is not outer and outer.returncode == -9
        assert STAND_IN not in prestart._waiting  # the inner one's, killed at its end; the outer's was gone


def test_variables_the_imports_set_themselves_do_not_count_as_another_environment(tmp_path: Path) -> None:
    steps: list[dict] = []
    with prestart.prestarted(STAND_IN, dict(os.environ)):
        started = waiting_process().pid
        # The flow imported the same library meanwhile, which set the same variable in the flow's process.
        now = {**os.environ, "STAND_IN_IMPORTED": "1"}
        run_worker(prestart.worker_command(STAND_IN, tmp_path / "spec.json"), tmp_path, steps.append, now)
    assert steps[0]["pid"] == started


def test_a_worker_that_writes_much_while_importing_is_still_taken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**os.environ, "STAND_IN_WARNINGS": "200"}  # 200 KB on stderr before it is ready
    steps: list[dict] = []
    waiting: list[subprocess.Popen] = []

    def prestart_and_run() -> None:  # in one thread, as a flow does both
        with prestart.prestarted(STAND_IN, env):
            waiting.append(waiting_process())
            run_worker(prestart.worker_command(STAND_IN, tmp_path / "spec.json"), tmp_path, steps.append, env)

    # In a thread with a deadline: a parent and a worker each waiting on the other would hang the suite.
    run = threading.Thread(target=prestart_and_run, daemon=True)
    run.start()
    run.join(120)
    if run.is_alive():
        waiting[0].kill()
        pytest.fail("the parent and the waiting worker blocked each other")
    assert steps[0]["pid"] == waiting[0].pid
    assert capsys.readouterr().err.count("warning: ") == 200  # relayed, as a fresh worker's would be


def test_a_signal_while_the_worker_still_imports_stops_the_run_and_kills_it(tmp_path: Path) -> None:
    env = {**os.environ, "STAND_IN_IMPORT_SECONDS": "30"}
    with prestart.prestarted(STAND_IN, env):
        waiting = waiting_process()
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()  # a pod stop, mid-imports
        with pytest.raises(StoppedError, match="SIGTERM before it began") as stopped:
            run_worker(prestart.worker_command(STAND_IN, tmp_path / "spec.json"), tmp_path, None, env)
    assert stopped.value.exit_code == 143
    assert waiting.returncode == -9


def test_another_environment_starts_afresh_and_the_waiting_one_is_killed(tmp_path: Path) -> None:
    steps: list[dict] = []
    with prestart.prestarted(STAND_IN, dict(os.environ)):
        waiting = waiting_process()
        other = {**os.environ, "OMP_NUM_THREADS": "1"}
        run_worker(prestart.worker_command(STAND_IN, tmp_path / "spec.json"), tmp_path, steps.append, other)
    assert steps[0]["pid"] != waiting.pid
    assert waiting.returncode == -9


def test_a_waiting_process_nothing_takes_is_killed_even_when_the_block_fails() -> None:
    with pytest.raises(DataError), prestart.prestarted(STAND_IN, dict(os.environ)):
        waiting = waiting_process()
        raise DataError("the gate stopped the run")
    assert waiting.returncode == -9
    assert STAND_IN not in prestart._waiting


def test_commands_of_another_shape_are_never_given_a_waiting_process(tmp_path: Path) -> None:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "-m", STAND_IN, "spec.json"]
    with prestart.prestarted(STAND_IN, dict(os.environ)):
        assert prestart.take(torchrun, dict(os.environ)) is None
        assert STAND_IN in prestart._waiting


def test_the_real_worker_imports_then_exits_cleanly_when_no_spec_comes() -> None:
    """What a prestarted worker does when training was cached or its parent died: stdin ends, exit 0."""
    done = subprocess.run(
        prestart.worker_command(WORKER_MODULE, prestart.WAIT_FOR_SPEC), input="", capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(prestart.READY_PREFIX)  # its environment after the imports, and nothing else
    assert done.stdout.count("\n") == 1


def test_smoltune_run_starts_the_training_worker_before_the_flow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`smoltune run` starts the worker before Prefect (whose import and start-up its imports then overlap);
    the flow finds it waiting, and one nothing took is killed when the command ends."""
    from typer.testing import CliRunner

    import flows.finetune
    from smoltune.cli import app

    waiting: list[prestart._Waiting] = []

    def the_flow(config: object, refresh: list[str]) -> str:  # stands in for the finetune flow: trains nothing
        waiting.append(prestart._waiting[WORKER_MODULE])
        return str(tmp_path)

    monkeypatch.setattr(flows.finetune, "finetune", the_flow)
    result = CliRunner().invoke(app, ["run", "--set", f"output.runs_dir={tmp_path}"])
    assert result.exit_code == 0, result.output
    assert waiting[0].popen.args == prestart.worker_command(WORKER_MODULE, prestart.WAIT_FOR_SPEC)
    assert waiting[0].popen.returncode == -9 and WORKER_MODULE not in prestart._waiting
