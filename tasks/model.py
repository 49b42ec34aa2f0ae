"""Prefect task: resolve `model.source` to a local folder (converting the embedded GGUF once)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from smoltune.config import ModelConfig
from smoltune.model import resolve_model


@task(name="resolve_model", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def resolve_model_task(model: ModelConfig) -> dict[str, str]:
    """Retried because a hub download can fail transiently; the embedded path never touches the network."""
    resolved = resolve_model(model.source, model.revision)
    get_run_logger().info("model %s -> %s (sha256 %s)", model.source, resolved.path, resolved.sha256[:12])
    return resolved.to_dict()
