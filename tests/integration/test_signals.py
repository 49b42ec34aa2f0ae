"""SIGTERM sent to the CLI's process only (what Kubernetes does to a pod's main process, and what a Prefect
cancellation does to a flow-run process) reaches the training worker: it stops at a step boundary, writes a
checkpoint, the locks are released, the CLI exits 143 with one line, the flow run ends Cancelled with that line's
message (its train task run Cancelled too), and a rerun resumes from that checkpoint."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil

from tests.prefect_runs import task_runs
from tests.tiny_model import tiny_overrides

SMOLTUNE = str(Path(sys.executable).parent / "smoltune")
STEP = re.compile(r"step (\d+)/(\d+)")
FLOW_RUN = re.compile(r"Flow run '([^']+)'")  # Prefect's log prefix, naming the CLI's flow run


class Cli:
    """`smoltune run` in its own process, its output read as it comes."""

    def __init__(self, args: list[str]) -> None:
        from prefect.settings import PREFECT_API_URL

        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value() or ""}
        self.proc = subprocess.Popen(
            [SMOLTUNE, "run", "--config", "configs/smoke.yaml", *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.stepped = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line)
            if STEP.search(line):
                self.stepped.set()

    def steps(self) -> list[int]:
        return [int(m.group(1)) for line in self.lines if (m := STEP.search(line))]

    def workers(self) -> list[psutil.Process]:
        children = psutil.Process(self.proc.pid).children(recursive=True)
        return [c for c in children if "smoltune.train.worker" in " ".join(c.cmdline())]

    def stop(self) -> tuple[int, str]:
        workers = self.workers()
        assert workers, "no training worker was running"
        self.proc.send_signal(signal.SIGTERM)  # the CLI's process only, never its process group
        code = self.proc.wait(timeout=180)
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, "the training worker outlived the CLI"
        return code, "".join(self.lines)


def flow_run_state(output: str) -> tuple[str, str]:
    """The final state (type, message) of the flow run whose log lines are in `output`, from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    match = FLOW_RUN.search(output)
    assert match, output
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[match.group(1)])))
    assert len(runs) == 1 and runs[0].state is not None, runs
    return runs[0].state.type.value, runs[0].state.message or ""


def train_task_state(output: str) -> str:
    """The final state type of the flow run's `train` task run, once it has one (tests/prefect_runs.py)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, TaskRunFilter, TaskRunFilterName

    match = FLOW_RUN.search(output)
    assert match, output
    flows = FlowRunFilter(name=FlowRunFilterName(any_=[match.group(1)]))
    trains = TaskRunFilter(name=TaskRunFilterName(like_="train-"))
    runs = task_runs(flows, lambda runs: any(run.state is not None and run.state.is_final() for run in runs), trains)
    final = [r.state.type.value for r in runs if r.state is not None and r.state.is_final()]
    assert len(final) == 1, runs
    return final[0]


def complete_checkpoints(runs: Path) -> list[int]:
    found = runs.glob("_cache/train/*/checkpoints/checkpoint-*/smoltune_complete.json")
    return sorted(int(p.parent.name.split("-")[1]) for p in found)


def test_sigterm_stops_training_with_a_checkpoint_and_a_rerun_resumes(
    prefect_server: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Far more steps than the test waits for, and no periodic checkpoint: any checkpoint is the signal's.
    overrides = [
        *tiny_overrides(tiny_model_dir, tmp_path / "runs"),
        "train.max_steps=100000",
        "train.save_steps=100000",
    ]
    args = [arg for o in overrides for arg in ("--set", o)]

    first = Cli(args)
    assert first.stepped.wait(timeout=300), "".join(first.lines)
    code, output = first.stop()
    assert code == 143, output
    assert "Traceback" not in output and output.count("error:") == 1, output
    assert "stopped by SIGTERM" in output and "rerun resumes" in output, output
    # Stopped on request: Cancelled (not Failed, nor Crashed), with the message the CLI printed.
    state, message = flow_run_state(output)
    assert state == "CANCELLED" and "stopped by SIGTERM" in message and f"error: {message}" in output, (state, message)
    assert train_task_state(output) == "CANCELLED"  # the stage too, not Failed (smoltune.pipeline.stopping)
    saved = complete_checkpoints(tmp_path / "runs")
    assert len(saved) == 1 and saved[0] >= 1, saved

    # The rerun takes the same stage lock and training slot (so both were released) and continues from the
    # checkpoint: its first logged step is past the saved one, never step 1 again.
    second = Cli(args)
    assert second.stepped.wait(timeout=300), "".join(second.lines)
    code, output = second.stop()
    assert code == 143, output
    assert min(second.steps()) > saved[0], (saved, second.steps())
    assert complete_checkpoints(tmp_path / "runs")[-1] > saved[0]
