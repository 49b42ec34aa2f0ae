"""Prefect task: held-out eval loss, accuracy and prompt generations, base vs tuned, and the lm-evaluation-harness
tasks of `eval.harness`. Only the tuned model is measured here; the base's figures come from the evaluate_base
stage. Cached by the model, the training key, the content of the base's figures (a re-measured base reruns this),
the held-out rows, the eval settings, the prompts file's content and the harness task files' content."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from smoltune.config import PipelineConfig
from smoltune.evaluate.harness import measure_harness
from smoltune.evaluate.stage import EvalRequest, combine_figures, measure_tuned
from smoltune.files import atomic_write_json
from smoltune.pipeline.cache import Stage
from smoltune.pipeline.keys import evaluate_parts
from smoltune.pipeline.registry import promotion_metric
from smoltune.records import BaseEvaluated, Evaluated, HarnessFigures, Prepared, ResolvedModel, Trained
from smoltune.report.tables import harness_rows

STAGE = Stage("evaluate", Evaluated, evaluate_parts, __name__)
HARNESS_ARTIFACT_KEY = "smoltune-harness"


def publish_harness(harness: HarnessFigures, logger: Any) -> None:
    """The harness figures as a table artifact (the UI's history of them across runs) and log lines."""
    header = ["task", "metric", "base", "± base", "tuned", "± tuned", "n"]
    rows = [dict(zip(header, row, strict=True)) for row in harness_rows(harness.model_dump(mode="json"))]
    create_table_artifact(key=HARNESS_ARTIFACT_KEY, table=rows, description="lm-evaluation-harness, base vs tuned")
    for score in harness.scores:
        logger.info("harness %s %s base %s -> tuned %s", score.task, score.metric, score.base, score.tuned)


@task(name=STAGE.name, cache_policy=STAGE.cache_policy(), persist_result=True, result_serializer="json")
def evaluate_task(
    model: ResolvedModel,
    trained: Trained,
    prepared: Prepared,
    base: BaseEvaluated,
    config: PipelineConfig,
    cache_dir: str,
    refresh: bool = False,
) -> Evaluated:
    training = trained.result
    if (base.heldout_sha256, base.precision) != (prepared.eval_sha256, training.precision):
        raise ValueError(f"base figures {base.folder} were measured on other rows or in another precision")

    def compute(out: Path) -> Evaluated:
        tuned, data = measure_tuned(
            EvalRequest(
                model.path, training.output_dir, training.mode, prepared.eval_file, config.eval, config.data.template,
                config.train.max_seq_length, model.trust_remote_code, training.precision,
            )
        )  # fmt: skip
        base_figures = json.loads(Path(base.base_file).read_text())
        figures, answers, generations = combine_figures(base_figures, tuned, data, training.precision)
        if config.eval.harness is not None:  # lm-evaluation-harness tasks, in a process of their own
            harness = measure_harness(
                config.eval.harness, model.path, training, model.trust_remote_code, out, base_figures["harness"]
            )
            figures = figures.model_copy(update={"harness": harness})
        return Evaluated(
            figures=figures,
            heldout_sha256=prepared.eval_sha256,
            generations_file=str(atomic_write_json(out / "generations.json", generations)),
            answers_file=str(atomic_write_json(out / "answers.json", answers)),
        )

    inputs = {"model": model, "trained": trained, "prepared": prepared, "base": base, "config": config}
    result = STAGE.run(STAGE.task_folder(cache_dir=cache_dir, **inputs), compute, refresh)
    figures, logger = result.figures, get_run_logger()
    logger.info("eval loss base %.4f -> tuned %.4f", figures.eval_loss_base, figures.eval_loss_tuned)
    if figures.accuracy_base is not None:
        logger.info("held-out accuracy base %.3f -> tuned %.3f", figures.accuracy_base, figures.accuracy_tuned)
    if figures.harness is not None:
        publish_harness(figures.harness, logger)
    # A promotion metric the harness did not measure stops the run here, not after the report.
    promotion_metric(figures, config.eval.metric)
    return result
