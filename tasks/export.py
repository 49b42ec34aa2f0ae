"""Prefect task: the merged model and the GGUF file, when `export.merged` / `export.gguf` ask for them."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from smoltune.config import PipelineConfig
from smoltune.export.weights import export_gguf, export_merged
from smoltune.pipeline.cache import Stage
from smoltune.pipeline.keys import export_parts
from smoltune.records import Exported, ResolvedModel, Trained

STAGE = Stage("export", Exported, export_parts, __name__)


@task(name=STAGE.name, cache_policy=STAGE.cache_policy(), persist_result=True, result_serializer="json")
def export_task(
    model: ResolvedModel, trained: Trained, config: PipelineConfig, cache_dir: str, refresh: bool = False
) -> Exported:
    def compute(out: Path) -> Exported:
        merged_dir = gguf_file = None
        whole_model = Path(trained.result.output_dir)  # full fine-tuning already saved a whole model
        if trained.result.mode == "lora":
            whole_model = export_merged(model.path, trained.result.output_dir, out / "merged", model.trust_remote_code)
            merged_dir = str(whole_model)
        if config.export.gguf:
            gguf_type = config.export.gguf_type
            gguf_file = str(export_gguf(whole_model, out / f"model-{gguf_type}.gguf", gguf_type))
        return Exported(merged_dir=merged_dir, gguf_file=gguf_file)

    exported = STAGE.run(STAGE.task_folder(trained=trained, config=config, cache_dir=cache_dir), compute, refresh)
    for name, path in (("merged model", exported.merged_dir), ("GGUF", exported.gguf_file)):
        if path:
            get_run_logger().info("%s: %s", name, path)
    return exported
