"""Prefect task: the promotion gate (see `smoltune.pipeline.registry`); its decision is also an artifact."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from smoltune.config import PipelineConfig
from smoltune.pipeline.registry import notify_server, promote
from smoltune.records import Evaluated, PromotionDecision, Trained
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
        config.eval.metric,
    )
    logger = get_run_logger()
    logger.info("%s: %s", "promoted" if decision.promoted else "not promoted", decision.reason)
    if decision.promoted and config.output.notify_server and trained.result.mode == "lora":
        # Opt-in hand-off to serving; a server that is down must not fail a finished training.
        logger.info(notify_server(config.output.notify_server, run_name, trained.result.output_dir))
    create_markdown_artifact(
        key=PROMOTION_ARTIFACT_KEY,
        markdown=promotion_section(decision.model_dump(mode="json")),
        description=f"smoltune promotion decision for run {run_name}",
    )
    return decision
