"""Prefect task: the promotion gate (see `smoltune.registry`)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from smoltune.config import PipelineConfig
from smoltune.registry import promote, registry_key


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(config: PipelineConfig, run_name: str, trained: dict, evaluated: dict) -> dict:
    key = registry_key(config.model.source, config.data.source)
    decision = promote(config.output.registry_file, key, run_name, trained["output_dir"], evaluated)
    verdict = "promoted" if decision.promoted else "not promoted"
    get_run_logger().info("%s: %s", verdict, decision.reason)
    return decision.to_dict()
