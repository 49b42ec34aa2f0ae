"""The divergence guard: a NaN loss always stops a run; an infinite gradient norm stops it, except under fp16
loss scaling, where it is a skipped step (routine early in training) unless many come in a row."""

from __future__ import annotations

import math

import pytest

from smoltune.errors import TrainingError
from smoltune.train.instrumentation import MAX_SKIPPED_IN_A_ROW, FiniteGuard

INF, NAN = math.inf, math.nan


def step(n: int, loss: float = 1.0, grad_norm: float = 0.5) -> dict[str, float]:
    return {"step": n, "loss": loss, "learning_rate": 1e-4, "grad_norm": grad_norm, "tokens_seen": 10 * n}


@pytest.mark.parametrize("loss_scaling", [False, True])
def test_a_nan_loss_stops_every_run(loss_scaling: bool) -> None:
    with pytest.raises(TrainingError, match="at step 3"):
        FiniteGuard(loss_scaling).check(step(3, loss=NAN))


def test_without_loss_scaling_a_non_finite_norm_stops_the_run() -> None:
    guard = FiniteGuard(loss_scaling=False)
    guard.check(step(1, grad_norm=NAN), grad_norm_logged=False)  # an untracked norm is recorded as NaN
    with pytest.raises(TrainingError, match="gradient norm inf"):
        guard.check(step(2, grad_norm=INF))
    with pytest.raises(TrainingError, match="gradient norm nan"):
        FiniteGuard(loss_scaling=False).check(step(3, grad_norm=NAN))


def test_under_fp16_an_overflow_is_a_skipped_step() -> None:
    guard = FiniteGuard(loss_scaling=True)
    for n in range(1, 4):  # the scaler's first steps: its scale too high, steps skipped
        guard.check(step(n, grad_norm=INF))
    guard.check(step(4))
    for n in range(5, 5 + MAX_SKIPPED_IN_A_ROW - 1):  # a run one short of the limit, after a good step
        guard.check(step(n, grad_norm=NAN if n % 2 else INF))
    assert guard.skipped_in_a_row == MAX_SKIPPED_IN_A_ROW - 1


def test_under_fp16_many_overflows_in_a_row_stop_the_run() -> None:
    guard = FiniteGuard(loss_scaling=True)
    with pytest.raises(TrainingError, match=f"{MAX_SKIPPED_IN_A_ROW} fp16 steps in a row"):
        for n in range(1, MAX_SKIPPED_IN_A_ROW + 1):
            guard.check(step(n, grad_norm=INF))


def test_under_fp16_an_untracked_norm_is_not_an_overflow() -> None:
    guard = FiniteGuard(loss_scaling=True)
    for n in range(1, 2 * MAX_SKIPPED_IN_A_ROW):
        guard.check(step(n, grad_norm=NAN), grad_norm_logged=False)
    assert guard.skipped_in_a_row == 0
