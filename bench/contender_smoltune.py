"""Contender (c): smoltune's training stage (`smoltune.train.trainer.train`), with the seed job's settings from
configs/default.yaml and its default backend and fast path.

    python bench/contender_smoltune.py --model DIR --train-file train.jsonl --steps 10 --result c.json --work-dir /tmp/c
    python bench/contender_smoltune.py ... --set speed.pack_accumulation=false     # one switch off
    python bench/contender_smoltune.py ... --progress c.jsonl   # the lines bench/run.py's time box reads

smoltune's trainer reports each logged optimizer step (`on_step`); with its default fast path (accumulation
packed into one forward) a step is one micro-batch, so its progress lines carry tokens and loss together.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import common

from smoltune.config import load_config
from smoltune.errors import StoppedError
from smoltune.model import pick_device
from smoltune.train.precision import resolve_precision
from smoltune.train.spec import TrainSpec
from smoltune.train.trainer import train

DEFAULT_JOB = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def main() -> None:
    args = common.parse_args(__doc__)
    overrides = [
        f"train.max_steps={args.steps}",
        f"train.warmup_steps={common.warmup_steps(args.steps)}",
        f"train.save_steps={args.steps + 1}",  # no checkpoint inside the measured run, like the baselines
        *(f"train.{override}" for override in args.set),
    ]
    config = load_config(DEFAULT_JOB, overrides).train
    shutil.rmtree(args.work_dir, ignore_errors=True)  # a finished folder would return its old result
    # The precision train() will pick (the same rule, its measurement cached per machine), known before training
    # so that a run stopped at its time box still says what it trained in.
    precision = resolve_precision(pick_device(), config.mode, config.precision, args.model)
    progress = common.ProgressFile(args.progress, precision.name)
    try:
        result = train(
            TrainSpec(args.model, args.train_file, args.work_dir, config.model_dump(mode="json")),
            on_step=lambda record, _total: progress.micro_batch(record["tokens_seen"], record["step"], record["loss"]),
            on_begin=lambda: progress.begin(args.steps),
        )
    except StoppedError as stop:  # the bench's time box (bench/timebox.py) sent SIGTERM: expected, no traceback
        print(f"contender_smoltune: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)
    figures = {
        "steps": result.steps,
        "seconds": result.train_seconds,
        "tokens": result.tokens_seen,
        "tokens_per_second": result.tokens_per_second,
        "seconds_per_step": round(result.train_seconds / result.steps, 3),
        "peak_rss_mb": result.peak_memory_mb,
        "losses": [round(x, 5) for x in result.losses],
        "trainable_params": result.trainable_params,
    }
    settings = {"backend": result.backend, "backend_reason": result.backend_reason, **result.settings["fast_path"]}
    settings["precision_reason"] = result.settings["precision"]
    common.write_result(args.result, "smoltune", figures, settings, result.precision)


if __name__ == "__main__":
    main()
