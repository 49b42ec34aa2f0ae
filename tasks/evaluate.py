"""Prefect task: held-out eval loss, accuracy and prompt generations, base vs tuned. Cached by the model,
the training key, the held-out rows, the eval settings and the prompts file's content."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from smoltune.config import PipelineConfig
from smoltune.evaluate.stage import evaluate_tuned
from smoltune.files import atomic_write_json
from smoltune.pipeline.cache import Stage
from smoltune.pipeline.keys import evaluate_parts
from smoltune.records import Evaluated, Prepared, ResolvedModel, Trained

STAGE = Stage("evaluate", Evaluated, evaluate_parts, __name__)


@task(name=STAGE.name, cache_policy=STAGE.cache_policy(), persist_result=True, result_serializer="json")
def evaluate_task(
    model: ResolvedModel,
    trained: Trained,
    prepared: Prepared,
    config: PipelineConfig,
    cache_dir: str,
    refresh: bool = False,
) -> Evaluated:
    def compute(out: Path) -> Evaluated:
        figures, answers, generations = evaluate_tuned(
            model.path,
            trained.result.output_dir,
            trained.result.mode,
            prepared.eval_file,
            config.eval,
            config.data.template,
            config.train.max_seq_length,
            model.trust_remote_code,
            trained.result.precision,
        )
        return Evaluated(
            figures=figures,
            heldout_sha256=prepared.eval_sha256,
            generations_file=str(atomic_write_json(out / "generations.json", generations)),
            answers_file=str(atomic_write_json(out / "answers.json", answers)),
        )

    inputs = {"model": model, "trained": trained, "prepared": prepared, "config": config}
    result = STAGE.run(STAGE.task_folder(cache_dir=cache_dir, **inputs), compute, refresh)
    figures, logger = result.figures, get_run_logger()
    logger.info("eval loss base %.4f -> tuned %.4f", figures.eval_loss_base, figures.eval_loss_tuned)
    if figures.accuracy_base is not None:
        logger.info("held-out accuracy base %.3f -> tuned %.3f", figures.accuracy_base, figures.accuracy_tuned)
    return result
