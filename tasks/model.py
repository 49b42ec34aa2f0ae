"""Prefect task: resolve `model.source` to a local folder (converting the embedded GGUF once)."""

from __future__ import annotations

from prefect import get_run_logger, task

from smoltune.config import ModelConfig
from smoltune.model import resolve_model
from smoltune.pipeline.cache import Stage
from smoltune.pipeline.keys import resolve_model_parts
from smoltune.records import ResolvedModel

STAGE = Stage("resolve_model", ResolvedModel, resolve_model_parts, __name__)


@task(
    name=STAGE.name,
    cache_policy=STAGE.cache_policy(),
    persist_result=True,
    result_serializer="json",
)
def resolve_model_task(model: ModelConfig, cache_dir: str, refresh: bool = False) -> ResolvedModel:
    """No task retries: huggingface_hub retries transient failures of a download itself; a missing folder or
    an unknown repository will not heal by trying again."""

    def compute(_: object) -> ResolvedModel:
        resolved = resolve_model(model.source, model.revision)
        return resolved.model_copy(update={"trust_remote_code": model.trust_remote_code})

    result = STAGE.run(STAGE.task_folder(model=model, cache_dir=cache_dir), compute, refresh)
    get_run_logger().info("model %s -> %s (sha256 %s)", model.source, result.path, result.sha256[:12])
    return result
