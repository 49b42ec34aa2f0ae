"""Sweeps across a real Dask cluster (`dask scheduler` + `dask worker` started here on 127.0.0.1), with each
training holding a slot of its machine's Prefect concurrency limit: one training per machine by default,
two at once once the limit is raised, a clear BusyError when no slot comes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from smoltune.config import load_config
from smoltune.errors import BusyError, ConfigError
from smoltune.pipeline.slots import SIZE_VARIABLE, limit_name, slots_per_machine, training_slot
from tests.conftest import REPO, free_port
from tests.tiny_model import tiny_overrides


def set_limit(size: int) -> None:
    """This machine's training limit at `size` slots, as a user would set it in the UI."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from smoltune.pipeline.slots import ensure_limit

    ensure_limit(limit_name(), size)
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(limit_name(), GlobalConcurrencyLimitUpdate(limit=size))


@pytest.fixture
def dask_cluster(prefect_server: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Dask scheduler and two one-thread worker processes on 127.0.0.1, reporting to the test's Prefect API."""
    from distributed import Client
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    dask = str(Path(sys.executable).parent / "dask")
    common = {"env": env, "cwd": REPO, "start_new_session": True, "stdout": subprocess.DEVNULL}
    port = address.rsplit(":", 1)[1]
    started = [
        subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"], **common),
        subprocess.Popen(
            [dask, "worker", address, "--nworkers", "2", "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"],
            **common,
        ),
    ]
    try:
        with Client(address, timeout=120) as client:
            client.wait_for_workers(2, timeout=180)
        yield address
    finally:
        for proc in started:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in started:
            proc.wait(timeout=60)
        set_limit(1)


def hold_slot(seconds: float) -> tuple[float, float]:
    """Run on a Dask worker: hold a training slot for `seconds` (a stand-in for a training: on two cores the
    tests never run two real trainings at once); returns when it held it."""
    with training_slot(poll_s=1):
        start = time.time()
        time.sleep(seconds)
        return start, time.time()


def overlap(windows: list[tuple[float, float]]) -> bool:
    (a_start, a_end), (b_start, b_end) = sorted(windows)
    return b_start < a_end


def test_one_machine_takes_turns_until_its_limit_is_raised(dask_cluster: str) -> None:
    from distributed import Client

    with Client(dask_cluster) as client:
        workers = sorted(client.scheduler_info()["workers"])
        assert len(workers) == 2

        def both() -> list[tuple[float, float]]:
            futures = [client.submit(hold_slot, 3, pure=False, workers=[w], allow_other_workers=False) for w in workers]
            return client.gather(futures)

        set_limit(1)
        assert not overlap(both())  # two workers, one machine: the second waited for the slot
        set_limit(2)  # e.g. `prefect gcl update smoltune-training-<host> --limit 2` on a 2-GPU host
        assert overlap(both())


@pytest.mark.slow  # over 30 s: `make test-slow` (CI runs it after `make test`)
def test_sweep_spreads_over_the_cluster_one_training_per_machine(
    dask_cluster: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from distributed import Client, get_task_stream

    from flows.sweep import dask_runner, sweep

    set_limit(1)
    config = load_config("configs/smoke.yaml", tiny_overrides(tiny_model_dir, tmp_path / "runs"))
    with Client(dask_cluster) as client, get_task_stream(client) as stream:
        rows = sweep.with_options(task_runner=dask_runner(dask_cluster))(
            config=config, ranks=[4, 8], learning_rates=[1e-3]
        )
    assert [(r["lora_rank"], r["learning_rate"]) for r in rows] == [(4, 1e-3), (8, 1e-3)]
    assert all(Path(r["output_dir"], "adapter_model.safetensors").is_file() for r in rows)
    assert len({task["worker"] for task in stream.data}) == 2  # both workers ran the sweep's tasks
    assert {r["host"] for r in rows} == {socket.gethostname()}
    windows = [(datetime.fromisoformat(r["started_at"]).timestamp(), r["train_seconds"]) for r in rows]
    assert not overlap([(start, start + seconds) for start, seconds in windows])  # one machine: one at a time


def test_no_slot_in_time_is_a_busy_error_naming_the_limit(prefect_server: None) -> None:
    from prefect.client.orchestration import get_client

    from smoltune.pipeline.slots import ensure_limit

    set_limit(1)
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with training_slot():
            holding.set()
            release.wait(60)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert holding.wait(60)
        with pytest.raises(BusyError, match=limit_name()), training_slot(limit_s=2, poll_s=1):
            pass
    finally:
        release.set()
        thread.join()
    with training_slot(limit_s=10) as name:  # released: free again
        assert name == limit_name()
    ensure_limit(name, 5)  # a limit that exists keeps its size (a change made in the UI stays)
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).limit == 1


def test_limit_names_and_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert limit_name("GPU-Node_07.example.org") == "smoltune-training-gpu-node-07-example-org"
    assert slots_per_machine({}) == 1 and slots_per_machine({SIZE_VARIABLE: "4"}) == 4
    for bad in ("0", "two", "-1"):
        with pytest.raises(ConfigError, match=SIZE_VARIABLE):
            slots_per_machine({SIZE_VARIABLE: bad})


HOLD = """
import sys, time
from smoltune.pipeline.slots import training_slot
with training_slot() as name:
    print("HELD", name, flush=True)
    time.sleep(600)
"""


def killed_holder(env: dict[str, str]) -> None:
    """A process that takes a training slot and is SIGKILLed while holding it (a lost machine or OOM kill)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    assert proc.stdout.readline().startswith("HELD")  # type: ignore[union-attr]
    proc.kill()
    proc.wait(timeout=30)


def test_without_a_server_slots_are_file_locks_freed_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from smoltune.pipeline.slots import machine_slot

    monkeypatch.setenv("SMOLTUNE_HOME", str(tmp_path))
    monkeypatch.setenv(SIZE_VARIABLE, "2")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    killed_holder(env)
    killed_holder(env)
    with machine_slot(limit_s=5), machine_slot(limit_s=5):  # both slots free again at once, two held together
        with pytest.raises(BusyError, match="one of 2"), machine_slot(limit_s=1, poll_s=0.5):
            pass
