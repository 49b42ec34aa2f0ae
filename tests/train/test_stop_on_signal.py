"""Training stops on SIGTERM/SIGINT at a step boundary (the end-to-end case: tests/integration/test_signals.py)."""

from __future__ import annotations

import pytest


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
