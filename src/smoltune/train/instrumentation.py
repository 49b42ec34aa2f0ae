"""Training measurements: peak memory while a block runs, and the per-step log of a Trainer.

with PeakMemory() as peak:
    trainer.train()
print(peak.megabytes)
"""

from __future__ import annotations

import threading
from typing import Any

import psutil

# Imported by the training module only, which needs transformers anyway.
from transformers import TrainerCallback


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
    """Collects one record per logged optimizer step: loss, learning rate, grad norm, real tokens so far."""

    def __init__(self, on_step: Any = None) -> None:
        self.steps: list[dict[str, float]] = []
        self.on_step = on_step

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
