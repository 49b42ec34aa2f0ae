"""Prefect task: resolve `model.source` to a local folder (converting the embedded GGUF once)."""

from __future__ import annotations

from prefect import get_run_logger, task

from smoltune.caching import StageCache, folder_for, run_stage
from smoltune.config import ModelConfig
from smoltune.model import resolve_model
from smoltune.stage_keys import resolve_model_parts

STAGE = "resolve_model"


@task(
    name=STAGE,
    cache_policy=StageCache(stage=STAGE, parts=resolve_model_parts),
    persist_result=True,
    retries=2,
    retry_delay_seconds=5,
)
def resolve_model_task(model: ModelConfig, cache_dir: str, refresh: bool = False) -> dict:
    """Retried because a hub download can fail transiently; the embedded path never touches the network."""

    def compute(_: object) -> dict:
        resolved = resolve_model(model.source, model.revision).to_dict()
        # A deleted model folder invalidates the cache; later stages read trust_remote_code from here.
        return {**resolved, "trust_remote_code": model.trust_remote_code, "requires": [resolved["path"]]}

    folder = folder_for(STAGE, resolve_model_parts, model=model, cache_dir=cache_dir)
    result = run_stage(folder, compute, refresh)
    get_run_logger().info("model %s -> %s (sha256 %s)", model.source, result["path"], result["sha256"][:12])
    return result
