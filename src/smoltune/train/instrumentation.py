"""Training measurements: peak memory while a block runs, and the per-step log of a Trainer.

with PeakMemory() as peak:
    trainer.train()
print(peak.megabytes)
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import psutil

# Imported by the training module only, which needs transformers anyway.
from transformers import TrainerCallback

from smoltune.errors import TrainingError


class PeakMemory:
    """Peak memory of this process during a `with` block: CUDA max allocated when training on a GPU,
    otherwise the resident set size sampled every `interval` seconds (RSS includes the model itself)."""

    def __init__(self, interval: float = 0.2, cuda: bool = False) -> None:
        self.interval = interval
        self.cuda = cuda
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            import torch

            self.peak_bytes = torch.cuda.max_memory_allocated()
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

    @property
    def megabytes(self) -> float:
        return self.peak_bytes / 2**20


class StepLog(TrainerCallback):
    """Collects one record per logged optimizer step: loss, learning rate, grad norm, real tokens so far; and
    stops a run that diverged (`FiniteGuard`). `loss_scaling`: the run trains in fp16 with a loss scaler.
    `on_begin` is called once the model is loaded and training starts (a benchmark times training from there)."""

    def __init__(
        self, on_step: Any = None, loss_scaling: bool = False, on_begin: Callable[[], None] | None = None
    ) -> None:
        self.steps: list[dict[str, float]] = []
        self.on_step = on_step
        self.on_begin = on_begin
        self.guard = FiniteGuard(loss_scaling)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.on_begin is not None:
            self.on_begin()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
        if not logs or "loss" not in logs:
            return  # the final summary log carries train_loss, not a step's loss
        record = {
            "step": int(state.global_step),
            "loss": float(logs["loss"]),
            "learning_rate": float(logs.get("learning_rate", 0.0)),
            "grad_norm": float(logs.get("grad_norm", float("nan"))),
            "tokens_seen": int(state.num_input_tokens_seen),
        }
        self.steps.append(record)
        if self.on_step is not None:
            self.on_step(record, state.max_steps)
        self.guard.check(record, grad_norm_logged="grad_norm" in logs)


# Under fp16 loss scaling a step whose gradients overflow is skipped by the scaler, which halves its scale and
# goes on: routine early in training. Only a run of them means the gradients overflow at any scale (after ten
# the scale has fallen 1024x).
MAX_SKIPPED_IN_A_ROW = 10


class FiniteGuard:
    """A NaN or infinite loss never recovers: stop at once with the step and what to try, instead of spending
    the remaining steps on a model that is already ruined. An infinite gradient norm stops the run too, except
    under fp16 loss scaling, where a non-finite norm is the skipped step it is, unless MAX_SKIPPED_IN_A_ROW come
    in a row. A NaN norm counts only when the trainer logged one (an untracked norm is recorded as NaN too)."""

    def __init__(self, loss_scaling: bool = False) -> None:
        self.loss_scaling = loss_scaling
        self.skipped_in_a_row = 0

    def check(self, record: dict[str, float], grad_norm_logged: bool = True) -> None:
        norm = record["grad_norm"]
        if not math.isfinite(record["loss"]):
            raise _diverged(record, "")
        if not self.loss_scaling:
            if math.isinf(norm) or (grad_norm_logged and math.isnan(norm)):
                raise _diverged(record, "")
            return
        overflow = grad_norm_logged and not math.isfinite(norm)
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if overflow else 0
        if self.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise _diverged(record, f"{self.skipped_in_a_row} fp16 steps in a row overflowed and were skipped; ")


def _diverged(record: dict[str, float], why: str) -> TrainingError:
    return TrainingError(
        f"{why}training loss became {record['loss']} (gradient norm {record['grad_norm']}) at step {record['step']}; "
        "lower train.learning_rate (or raise train.warmup_steps), and check that rows keep answer tokens within "
        "train.max_seq_length" + ("; or train in bf16 or fp32 (train.precision)" if why else "")
    )
