"""Prefect task: the merged model and the GGUF file, when `export.merged` / `export.gguf` ask for them."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from smoltune.config import PipelineConfig
from smoltune.exports import export_gguf, export_merged


@task(name="export", cache_policy=NO_CACHE)
def export_task(model: dict, trained: dict, config: PipelineConfig) -> dict:
    """Outputs go beside the training output, whose folder is content-addressed: an existing file is current."""
    logger = get_run_logger()
    work_dir = Path(trained["output_dir"]).parent
    exported: dict = {}
    whole_model = Path(trained["output_dir"])  # full fine-tuning already saved a whole model
    if trained["mode"] == "lora":
        whole_model = work_dir / "merged"
        if not whole_model.is_dir():
            export_merged(model["path"], trained["output_dir"], whole_model, config.model.trust_remote_code)
        exported["merged_dir"] = str(whole_model)
        logger.info("merged model: %s", whole_model)
    if config.export.gguf:
        gguf_file = work_dir / f"model-{config.export.gguf_type}.gguf"
        if not gguf_file.is_file():
            export_gguf(whole_model, gguf_file, config.export.gguf_type)
        exported["gguf_file"] = str(gguf_file)
        logger.info("GGUF (%s): %s", config.export.gguf_type, gguf_file)
    return exported
