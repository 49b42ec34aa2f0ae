"""Training stops on SIGTERM/SIGINT at a step boundary (the end-to-end case: tests/integration/test_signals.py)."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import pytest

STOP_AT = 3  # the step at whose end rank 1 alone has received the signal


def test_a_signal_at_the_last_step_keeps_the_finished_training() -> None:
    """StopOnSignal ends the worker only before max_steps: a training that finished is saved, not discarded."""
    import signal

    from smoltune.errors import StoppedError
    from smoltune.train.checkpoints import StopOnSignal

    previous = {s: signal.getsignal(s) for s in StopOnSignal.SIGNALS}
    try:
        stopper = StopOnSignal()
        stopper.signum = signal.SIGTERM
        stopper.raise_if_stopped(step=10, max_steps=10)  # finished: no error
        with pytest.raises(StoppedError) as stopped:
            stopper.raise_if_stopped(step=7, max_steps=10)
        assert stopped.value.exit_code == 143 and "checkpoint-7" in str(stopped.value)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_one_process_stops_on_its_own_signal_without_a_process_group() -> None:
    import torch.distributed as dist
    from transformers import TrainerControl, TrainerState

    from smoltune.train.checkpoints import StopOnSignal

    previous = {s: signal.getsignal(s) for s in StopOnSignal.SIGNALS}
    try:
        stopper, control = StopOnSignal(), TrainerControl()
        stopper.on_step_end(None, TrainerState(), control)
        assert not control.should_training_stop
        stopper.signum = signal.SIGINT
        stopper.on_step_end(None, TrainerState(), control)
        assert control.should_training_stop and control.should_save and not dist.is_initialized()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _rank_steps(rank: int, port: int, out: str) -> None:
    """One of two gloo ranks: step ends 1.. until told to stop; rank 1 alone gets SIGTERM before step STOP_AT's
    end. Records where this rank stopped, whether it saves, and the exit code raise_if_stopped gives it."""
    from datetime import timedelta

    import torch.distributed as dist
    from transformers import TrainerControl, TrainerState

    from smoltune.errors import StoppedError
    from smoltune.train.checkpoints import StopOnSignal

    # A short timeout: a rank left waiting in a collective fails the test instead of hanging it.
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=20)
    )
    stopper, state = StopOnSignal(), TrainerState(max_steps=10)
    for step in range(1, 11):
        state.global_step = step
        if rank == 1 and step == STOP_AT:
            stopper.signum = signal.SIGTERM
        control = TrainerControl()
        stopper.on_step_end(None, state, control)
        if control.should_training_stop:
            break
    try:
        stopper.raise_if_stopped(state.global_step, state.max_steps)
        exit_code = 0
    except StoppedError as err:
        exit_code = err.exit_code
    dist.destroy_process_group()
    record = {"step": state.global_step, "saves": control.should_save, "exit_code": exit_code}
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:
    """Under torchrun a signal may reach one rank only: all ranks must still stop (and save) after the same step,
    or the others hang in the next step's all-reduce. Two real processes, gloo, no training."""
    import torch.multiprocessing as mp

    import smoltune.train.checkpoints  # noqa: F401 - loaded once here: forked ranks skip transformers' slow import

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.start_processes(_rank_steps, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert records == [{"step": STOP_AT, "saves": True, "exit_code": 143}] * 2, records
