"""Prefect task: the finished run sent to MLflow (smoltune.tracking), when `tracking.mlflow_uri` is set.

    smoltune run --config configs/smoke.yaml --set tracking.mlflow_uri=http://127.0.0.1:5000

Each flow calls one of the `track_*` functions last, after promotion and the report: they build the MLflow run
from the stage records (nothing when tracking is off, not even a task run) and hand it to `track_task`, which
adds the Prefect flow-run URL as a tag and logs a warning, never an error, when MLflow cannot take it.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact
from prefect.cache_policies import NO_CACHE

from smoltune.config import CompareConfig, PipelineConfig, TrackingConfig, variant_config
from smoltune.records import Evaluated, PreferenceEvaluated, PreferenceTrained, PromotionDecision, Trained
from smoltune.tracking.content import (
    COMPARE_FILES,
    RUN_FILES,
    SWEEP_FILES,
    TrackedRun,
    parent_run,
    preference_run,
    run_folder_files,
    trained_run,
)
from smoltune.tracking.mlflow_runs import track
from tasks.compare import VariantResult

MLFLOW_ARTIFACT_KEY = "smoltune-mlflow-run"
PREFECT_URL_TAG = "prefect.flow_run_url"
PREFECT_ID_TAG = "prefect.flow_run_id"


@task(name="track", cache_policy=NO_CACHE)
def track_task(tracking: TrackingConfig, run: TrackedRun) -> str | None:
    """Log `run` to MLflow; returns the MLflow run id (None when it was not logged)."""
    logger = get_run_logger()
    outcome = track(tracking, run, prefect_tags())
    if outcome.warning:
        # A finished training stays finished: the run folder holds everything MLflow would have had.
        logger.warning(outcome.warning)
        return None
    logger.info("MLflow run %s%s", outcome.run_id, f" (registered as version {outcome.model_version})"
                if outcome.model_version else "")  # fmt: skip
    if outcome.run_url:
        create_link_artifact(key=MLFLOW_ARTIFACT_KEY, link=outcome.run_url, link_text=f"MLflow run {run.name}")
    return outcome.run_id


def prefect_tags() -> dict[str, str]:
    """The flow run's id, and its page in the Prefect UI where Prefect knows the UI's address (a server's API
    URL gives it; a temporary local server has none, and Prefect's ui_url would then start with "None")."""
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_UI_URL

    if flow_run.id is None:
        return {}
    tags = {PREFECT_ID_TAG: str(flow_run.id)}
    return tags | ({PREFECT_URL_TAG: flow_run.ui_url} if PREFECT_UI_URL.value() else {})


def track_finetune(
    config: PipelineConfig, run_dir: Path, trained: Trained, evaluated: Evaluated, promotion: PromotionDecision
) -> None:
    if config.tracking.mlflow_uri:
        files = run_folder_files(run_dir, RUN_FILES)
        run = trained_run(run_dir.name, config, trained.result, evaluated.figures, promotion, files)
        track_task(config.tracking, run)


def track_preference(
    config: PipelineConfig,
    run_dir: Path,
    sft: Trained,
    dpo: PreferenceTrained,
    evaluated: PreferenceEvaluated,
    promotion: PromotionDecision,
) -> None:
    if config.tracking.mlflow_uri:
        files = run_folder_files(run_dir, RUN_FILES)
        run = preference_run(
            run_dir.name, config, sft.result, dpo.result, evaluated.as_tuned, evaluated.figures, promotion, files
        )
        track_task(config.tracking, run)


def track_compare(config: CompareConfig, run_dir: Path, results: list[VariantResult]) -> None:
    """Each variant a run nested under the comparison's."""
    if config.pipeline.tracking.mlflow_uri:
        jobs = {v.name: variant_config(config, v) for v in config.variants}
        children = [
            trained_run(r.name, jobs[r.name], r.trained.result, r.evaluated.figures) for r in results
        ]  # fmt: skip
        files = run_folder_files(run_dir, COMPARE_FILES)
        track_task(config.pipeline.tracking, parent_run(run_dir.name, config.pipeline, files, children))


def track_sweep(
    config: PipelineConfig,
    run_dir: Path,
    jobs: list[PipelineConfig],
    trained: list[Trained],
    evaluated: list[Evaluated],
) -> None:
    """One nested run per grid point, named by its rank and learning rate."""
    if config.tracking.mlflow_uri:
        children = [
            trained_run(f"r{job.train.lora.r}-lr{job.train.learning_rate:g}", job, t.result, e.figures)
            for job, t, e in zip(jobs, trained, evaluated, strict=True)
        ]
        files = run_folder_files(run_dir, SWEEP_FILES)
        track_task(config.tracking, parent_run(run_dir.name, config, files, children))
