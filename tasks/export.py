"""Prefect task: the merged model and the GGUF file, when `export.merged` / `export.gguf` ask for them."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from smoltune.caching import StageCache, folder_for, run_stage
from smoltune.config import PipelineConfig
from smoltune.exports import export_gguf, export_merged
from smoltune.stage_keys import export_parts

STAGE = "export"


@task(name=STAGE, cache_policy=StageCache(stage=STAGE, parts=export_parts), persist_result=True)
def export_task(model: dict, trained: dict, config: PipelineConfig, cache_dir: str, refresh: bool = False) -> dict:
    logger = get_run_logger()

    def compute(out: Path) -> dict:
        exported: dict = {}
        whole_model = Path(trained["output_dir"])  # full fine-tuning already saved a whole model
        if trained["mode"] == "lora":
            whole_model = export_merged(
                model["path"], trained["output_dir"], out / "merged", model["trust_remote_code"]
            )
            exported["merged_dir"] = str(whole_model)
        if config.export.gguf:
            gguf_file = export_gguf(whole_model, out / f"model-{config.export.gguf_type}.gguf", config.export.gguf_type)
            exported["gguf_file"] = str(gguf_file)
        return exported

    folder = folder_for(STAGE, export_parts, trained=trained, config=config, cache_dir=cache_dir)
    exported = run_stage(folder, compute, refresh)
    for name in ("merged_dir", "gguf_file"):
        if name in exported:
            logger.info("%s: %s", name, exported[name])
    return exported
