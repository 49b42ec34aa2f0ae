"""The fine-tuning flow: resolve model, fetch, validate, prepare, train, evaluate, report.

    smoltune run --config configs/default.yaml            # through the CLI
    python -m flows.finetune                              # the seed job with defaults

Each stage is one Prefect task; this body only wires them together. Big outputs stay on disk in the run
folder and tasks pass paths and small dicts.
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


# log_prints stays off: dill (used by `datasets` to fingerprint functions) captures `dis` output via print,
# which Prefect would otherwise log line by line.
@flow(name="finetune")
def finetune(config: PipelineConfig = PipelineConfig()) -> str:  # noqa: B008 - pydantic default renders in the UI
    """Fine-tune `config.model.source` on `config.data.source`; returns the run folder's path."""
    run_dir = create_run_dir(config.output)
    write_config(run_dir, config)
    run = str(run_dir)
    timer = StageTimer()

    # Model first: a missing or unreachable model fails in seconds, before any data work.
    with timer("resolve_model"):
        model = resolve_model_task(config.model)

    # Data: load the source, gate it with Great Expectations (raises on critical failures), then split.
    with timer("fetch_dataset"):
        fetched = fetch_dataset_task(config.data, run)
    with timer("validate_dataset"):
        validation = validate_dataset_task(
            fetched, model, config.model, config.data, config.validation, config.train, run
        )
    with timer("prepare_dataset"):
        prepared = prepare_dataset_task(fetched, model, config.model, config.data, run)

    # Training (in its own process, resumable), optional exports, then evaluation of base vs tuned on
    # held-out rows and the eval prompts.
    with timer("train"):
        trained = train_task(model, prepared, config, run)
    if config.export.merged or config.export.gguf:
        with timer("export"):
            exported = export_task(model, trained, config)
    else:
        exported = {}
    with timer("evaluate"):
        evaluated = evaluate_task(model, trained, prepared, config, run)

    # Promotion: the registry keeps the best adapter per (model, dataset); this run replaces it only if better.
    with timer("promote"):
        promotion = promote_task(config, run_dir.name, trained, evaluated)

    # Report: summary.json, report.md / .html, the loss curve and the Prefect artifacts.
    data = {
        "source": fetched["source"],
        "sha256": fetched["sha256"],
        "source_rows": fetched["rows"],
        "train_rows": prepared["train_rows"],
        "eval_rows": prepared["eval_rows"],
    }
    summary = build_summary(run_dir, config, model, data, validation, trained, evaluated, timer.seconds)
    summary["artifacts"].update(exported)
    summary["promotion"] = promotion
    report_task(summary, evaluated["generations"])
    return run


if __name__ == "__main__":
    print(finetune())
