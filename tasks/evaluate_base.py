"""Prefect task: the base model on the held-out rows, the eval prompts and the lm-evaluation-harness tasks, in the
training's precision. Cached by the model, the held-out rows, the eval settings, the prompts file's content, the
harness task files' content and the precision, never by the training: a retraining measures only the new model."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task

from smoltune.config import PipelineConfig
from smoltune.evaluate.harness import measure_harness_base
from smoltune.evaluate.stage import measure_base
from smoltune.files import atomic_write_json
from smoltune.pipeline.cache import Stage
from smoltune.pipeline.keys import evaluate_base_parts
from smoltune.records import BaseEvaluated, Prepared, ResolvedModel, Trained

STAGE = Stage("evaluate_base", BaseEvaluated, evaluate_base_parts, __name__)


@task(name=STAGE.name, cache_policy=STAGE.cache_policy(), persist_result=True, result_serializer="json")
def evaluate_base_task(
    model: ResolvedModel,
    trained: Trained,
    prepared: Prepared,
    config: PipelineConfig,
    cache_dir: str,
    refresh: bool = False,
) -> BaseEvaluated:
    """`trained` only gives the precision: the base is measured as the tuned model will be."""
    precision, ev = trained.result.precision, config.eval

    def compute(out: Path) -> BaseEvaluated:
        base = measure_base(
            model.path, prepared.eval_file, ev, config.data.template, config.train.max_seq_length,
            model.trust_remote_code, precision,
        )  # fmt: skip
        harness = None
        if ev.harness is not None:  # lm-evaluation-harness tasks, in a process of their own
            harness = measure_harness_base(ev.harness, model.path, precision, model.trust_remote_code, out)
        return BaseEvaluated(
            base_file=str(atomic_write_json(out / "base.json", {**base, "harness": harness})),
            heldout_sha256=prepared.eval_sha256,
            precision=precision,
        )

    inputs = {"model": model, "trained": trained, "prepared": prepared, "config": config}
    result = STAGE.run(STAGE.task_folder(cache_dir=cache_dir, **inputs), compute, refresh)
    loss = json.loads(Path(result.base_file).read_text())["loss"]
    get_run_logger().info("base eval loss %.4f (%s, held-out rows %s)", loss, precision, result.heldout_sha256[:12])
    return result
