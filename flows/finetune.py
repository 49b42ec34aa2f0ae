"""The fine-tuning flow: resolve model, fetch, validate, prepare, train, [export], evaluate, promote, report.

    smoltune run --config configs/default.yaml            # through the CLI
    python -m flows.finetune                              # the seed job with defaults

Each stage is one Prefect task, cached by content: a rerun redoes only the stages whose inputs, settings or
code changed (`refresh` names stages to redo anyway; ["all"] redoes everything). Big outputs stay in
content-addressed folders and tasks pass paths, hashes and small dicts.
"""

from __future__ import annotations

from prefect import flow

from smoltune.config import PipelineConfig
from smoltune.runs import StageTimer, build_summary, create_run_dir, write_config
from tasks.data import fetch_dataset_task, prepare_dataset_task, validate_dataset_task
from tasks.evaluate import evaluate_task
from tasks.export import export_task
from tasks.model import resolve_model_task
from tasks.promote import promote_task
from tasks.report import report_task
from tasks.train import train_task

STAGES = ("resolve_model", "fetch_dataset", "validate_dataset", "prepare_dataset", "train", "export", "evaluate")


# log_prints stays off: dill (used by `datasets` to fingerprint functions) captures `dis` output via print,
# which Prefect would otherwise log line by line.
@flow(name="finetune")
def finetune(config: PipelineConfig = PipelineConfig(), refresh: list[str] | None = None) -> str:  # noqa: B008
    """Fine-tune `config.model.source` on `config.data.source`; returns the run folder's path."""
    run_dir = create_run_dir(config.output)
    write_config(run_dir, config)
    cache = config.output.cache_root
    redo = {stage: bool({stage, "all"} & set(refresh or [])) for stage in STAGES}
    timer = StageTimer()

    # Model first: a missing or unreachable model fails in seconds, before any data work.
    with timer("resolve_model"):
        model = resolve_model_task(config.model, cache, redo["resolve_model"])

    # Data: load the source, gate it with Great Expectations (raises on critical failures), then split.
    with timer("fetch_dataset"):
        fetched = fetch_dataset_task(config.data, cache, redo["fetch_dataset"])
    with timer("validate_dataset"):
        validation = validate_dataset_task(
            fetched, model, config.data, config.validation, config.train, cache, redo["validate_dataset"]
        )
    with timer("prepare_dataset"):
        prepared = prepare_dataset_task(fetched, model, config.data, cache, redo["prepare_dataset"])

    # Training (in its own process, resumable), optional exports, then evaluation of base vs tuned on
    # held-out rows and the eval prompts.
    with timer("train"):
        trained = train_task(model, prepared, config, cache, redo["train"])
    exported: dict = {}
    if config.export.merged or config.export.gguf:
        with timer("export"):
            exported = export_task(model, trained, config, cache, redo["export"])
    with timer("evaluate"):
        evaluated = evaluate_task(model, trained, prepared, config, cache, redo["evaluate"])

    # Promotion: the registry keeps the best adapter per (model, dataset); this run replaces it only if better.
    with timer("promote"):
        promotion = promote_task(config, run_dir.name, trained, evaluated)

    # Report: the run folder (links to the stage folders, summary, report.md / .html) and the artifacts.
    data = {
        "source": fetched["source"],
        "sha256": fetched["sha256"],
        "source_rows": fetched["rows"],
        "train_rows": prepared["train_rows"],
        "eval_rows": prepared["eval_rows"],
    }
    summary = build_summary(run_dir, config, model, data, validation, trained, evaluated, timer.seconds)
    summary["artifacts"].update({k: v for k, v in exported.items() if k != "stage_dir"})
    summary["promotion"] = promotion
    stage_dirs = {"data": prepared["stage_dir"], "validation": validation["stage_dir"], "train": trained["stage_dir"]}
    stage_dirs["evaluation"] = evaluated["stage_dir"]
    report_task(summary, evaluated["generations"], stage_dirs)
    return str(run_dir)


if __name__ == "__main__":
    print(finetune())
