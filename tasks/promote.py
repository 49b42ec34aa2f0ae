"""Prefect task: the promotion gate (see `smoltune.pipeline.registry`); its decision is also an artifact."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from smoltune.config import PipelineConfig
from smoltune.pipeline.records import Evaluated, PromotionDecision, Trained
from smoltune.pipeline.registry import promote
from smoltune.redaction import redact
from smoltune.report.markdown import promotion_section

PROMOTION_ARTIFACT_KEY = "smoltune-promotion"


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(config: PipelineConfig, run_name: str, trained: Trained, evaluated: Evaluated) -> PromotionDecision:
    decision = promote(
        config.output.registry_file,
        config.model.source,
        redact(config.data.source),
        run_name,
        trained.result.output_dir,
        evaluated.figures,
        evaluated.heldout_sha256,
    )
    get_run_logger().info("%s: %s", "promoted" if decision.promoted else "not promoted", decision.reason)
    create_markdown_artifact(
        key=PROMOTION_ARTIFACT_KEY,
        markdown=promotion_section(decision.model_dump(mode="json")),
        description=f"smoltune promotion decision for run {run_name}",
    )
    return decision
