"""What the bench contenders share: their command line, the rows (tokenised once, identically for all), the
measurement of a Trainer run, the progress file the bench's time box reads, and the result file. Imported by the
contender scripts in this folder.

    python bench/contender_trl.py --model DIR --train-file train.jsonl --steps 10 --result out.json --progress p.jsonl

The progress file holds one JSON line when training begins (`{"event": "begin", "time": <epoch s>, ...}`), then
one per finished micro-batch (`{"t": <s since begin>, "tokens": <real tokens so far>, "step": <optimizer steps
done>}`) and one per logged loss (`{"t", "step", "loss"}`; smoltune's lines carry tokens and loss together): a
contender stopped at its time box (bench/timebox.py) is reported from these lines.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

# The seed job (configs/default.yaml): LoRA r=16 on the 7 projections, batch 2 x grad-accum 4, lr 2e-4, seed 3407.
SEED = 3407
BATCH_SIZE, GRAD_ACCUM, LEARNING_RATE, WARMUP_STEPS, WEIGHT_DECAY = 2, 4, 2e-4, 5, 0.01


def warmup_steps(steps: int) -> int:
    """The seed job's 5 warm-up steps, fewer in a run shorter than that (same schedule for every contender)."""
    return min(WARMUP_STEPS, steps)


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", required=True, help="local model folder")
    parser.add_argument("--train-file", required=True, help="JSONL rows with prompt and completion")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--result", required=True, help="where to write the figures (JSON)")
    parser.add_argument("--work-dir", required=True, help="scratch folder for the trainer")
    parser.add_argument("--set", action="append", default=[], help="smoltune only: train.KEY=VALUE overrides")
    parser.add_argument("--precision", default="fp32", help="contender (b): the precision measured fastest here")
    parser.add_argument("--progress", help="JSON lines: training begun, each micro-batch, each logged loss")
    return parser.parse_args()


def tokenized_rows(tokenizer: Any, train_file: str) -> list[dict]:
    """input_ids and labels (prompt masked, EOS appended) made by smoltune's tokeniser for every contender, so
    that all three train on exactly the same tokens and the same labelled positions."""
    from smoltune.data.tokens import tokenize_rows
    from smoltune.files import read_jsonl

    return tokenize_rows(tokenizer, read_jsonl(train_file), max_length=2048, mask_prompt=True)


def cpu_loss_trainer(base: type) -> type:
    """`base` (an SFTTrainer class) computing the model's own loss: TRL 1.15 computes it with a Triton kernel
    whenever Triton is importable (it ships with the CUDA build of torch), which fails without a GPU. This is
    the one change the baselines need to run on a CPU at all; it computes the same cross-entropy."""
    from transformers import Trainer

    class CpuLossTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return CpuLossTrainer


class ProgressFile:
    """Appends the progress lines (module docstring) to `path`, each flushed at once: the process may be killed
    at any moment, and what it wrote until then is all the bench will know of it. No path: writes nothing."""

    def __init__(self, path: str | None, precision: str) -> None:
        self.path, self.precision = path, precision
        self.started = time.perf_counter()

    def write(self, line: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(line) + "\n")
                handle.flush()

    def begin(self, max_steps: int) -> None:
        self.started = time.perf_counter()
        self.write({"event": "begin", "time": time.time(), "max_steps": max_steps, "precision": self.precision})

    def micro_batch(self, tokens: int, step: int, loss: float | None = None) -> None:
        line = {"t": self.seconds(), "tokens": int(tokens), "step": int(step)}
        self.write(line if loss is None else {**line, "loss": round(float(loss), 5)})

    def loss(self, step: int, loss: float) -> None:
        self.write({"t": self.seconds(), "step": int(step), "loss": round(float(loss), 5)})

    def seconds(self) -> float:
        return round(time.perf_counter() - self.started, 3)


def progress_callback(progress: ProgressFile) -> Any:
    """A TrainerCallback writing `progress`: begin, every micro-batch (the substeps of gradient accumulation and
    the step that ends it), every logged loss."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            progress.begin(state.max_steps)

        def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            progress.micro_batch(state.num_input_tokens_seen, state.global_step)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            progress.micro_batch(state.num_input_tokens_seen, state.global_step)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:  # the final summary log carries train_loss, not a step's loss
                progress.loss(state.global_step, logs["loss"])

    return ProgressCallback()


def measure_training(trainer: Any) -> dict[str, Any]:
    """Run `trainer.train()`; wall time, real (non-padding) tokens, peak RSS and per-step losses."""
    from smoltune.train.instrumentation import PeakMemory

    with PeakMemory() as peak:
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    losses = [float(log["loss"]) for log in trainer.state.log_history if "loss" in log]
    tokens = int(trainer.state.num_input_tokens_seen)
    steps = int(trainer.state.global_step)
    return {
        "steps": steps,
        "seconds": round(seconds, 3),
        "tokens": tokens,
        "tokens_per_second": round(tokens / seconds, 2),
        "seconds_per_step": round(seconds / steps, 3),
        "peak_rss_mb": round(peak.megabytes, 1),
        "losses": [round(x, 5) for x in losses],
    }


def write_result(path: str, name: str, figures: dict[str, Any], settings: dict[str, Any], precision: str) -> None:
    """The figures, the settings and the compute precision (fp32, bf16, fp16) the contender trained in."""
    record = {"name": name, **figures, "precision": precision, "settings": settings}
    Path(path).write_text(json.dumps(record, indent=2))
