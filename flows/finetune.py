"""The fine-tuning flow: resolve model, fetch, validate, prepare, train, [export], evaluate base, evaluate, promote,
model card, report, [track in MLflow], [publish to the Hub].

    smoltune run --config configs/default.yaml            # through the CLI
    python -m flows.finetune                              # the seed job with defaults

Each stage is one Prefect task, cached by content: a rerun redoes only the stages whose inputs, settings or
code changed (`refresh` names stages to redo anyway; ["all"] redoes everything). Big outputs stay in
content-addressed folders and tasks pass paths, hashes and small dicts.
"""

from __future__ import annotations

from prefect.states import State

from smoltune.config import PipelineConfig
from smoltune.export.weights import check_exports
from smoltune.pipeline.runs import RunRecords, StageTimer, begin_flow_run, build_summary
from smoltune.pipeline.stopping import stoppable_flow, unless_stopped
from smoltune.records import Fetched, Prepared, ResolvedModel, Validated
from smoltune.train.runner import prestarted_training
from tasks.evaluate import evaluate_task
from tasks.evaluate_base import evaluate_base_task
from tasks.export import export_task
from tasks.fetch import fetch_dataset_task
from tasks.model import resolve_model_task
from tasks.prepare import prepare_dataset_task
from tasks.promote import promote_task
from tasks.publish import model_card_task, push_task
from tasks.report import report_task
from tasks.track import track_finetune
from tasks.train import train_task
from tasks.validate import validate_dataset_task

STAGES = (
    "resolve_model", "fetch_dataset", "validate_dataset", "prepare_dataset", "train", "export", "evaluate_base",
    "evaluate",
)  # fmt: skip


def data_stages(
    config: PipelineConfig, model: ResolvedModel, redo: dict[str, bool], timer: StageTimer
) -> tuple[Fetched, Validated, Prepared]:
    """Load the source (keyed by its content: new rows at a URL are new data), gate it with Great Expectations
    (raises on critical failures, before any training), then split and tokenise."""
    cache = config.output.cache_root
    with timer("fetch_dataset"):
        fetched = fetch_dataset_task(config.data, cache, redo["fetch_dataset"])
    with timer("validate_dataset"):
        validated = validate_dataset_task(
            fetched, model, config.data, config.validation, config.train, cache, redo["validate_dataset"]
        )
    with timer("prepare_dataset"):
        prepared = prepare_dataset_task(fetched, validated, model, config.data, cache, redo["prepare_dataset"])
    return fetched, validated, prepared


def sft_stages(config: PipelineConfig, redo: dict[str, bool], timer: StageTimer) -> RunRecords:
    """Resolve, fetch, gate, prepare, train, [export], evaluate base, evaluate: each a cached task (the preference flow
    starts from them)."""
    cache = config.output.cache_root
    # Model first: a missing, incomplete or unreachable model (or one a requested export cannot write) fails in
    # seconds, before any data work.
    with timer("resolve_model"):
        model = resolve_model_task(config.model, cache, redo["resolve_model"])
        check_exports(model.path, config.export.gguf)

    # The training process starts now: its imports overlap the data stages (killed unused if training is cached
    # or the gate stops the run).
    with prestarted_training(config.train):
        fetched, validated, prepared = data_stages(config, model, redo, timer)
        # Training (in its own process, resumable), optional exports, then evaluation of base vs tuned on
        # held-out rows and the eval prompts.
        with timer("train"):
            trained = unless_stopped(train_task(model, prepared, config, cache, redo["train"]))
    exported = None
    if config.export.merged or config.export.gguf:
        with timer("export"):
            exported = export_task(model, trained, config, cache, redo["export"])
    # The base's figures in a stage of their own, keyed without the training: a retraining reuses them.
    with timer("evaluate_base"):
        base = evaluate_base_task(model, trained, prepared, config, cache, redo["evaluate_base"])
    with timer("evaluate"):
        evaluated = evaluate_task(model, trained, prepared, base, config, cache, redo["evaluate"])

    return RunRecords(model, fetched, validated, prepared, trained, evaluated, exported)


# log_prints stays off: dill (used by `datasets` to fingerprint functions) captures `dis` output via print,
# which Prefect would otherwise log line by line.
# A signalled training ends the run Cancelled (its checkpoint kept), not Failed: see stoppable_flow.
@stoppable_flow(name="finetune")
def finetune(config: PipelineConfig = PipelineConfig(), refresh: list[str] | None = None) -> str | State:  # noqa: B008
    """Fine-tune `config.model.source` on `config.data.source`; returns the run folder's path (a Cancelled state
    when a signal stopped the training)."""
    # The same checks as the CLI's for runs started from the Prefect API or UI, before anything runs.
    config, run_dir = begin_flow_run(config, "flow parameter config")
    redo = {stage: bool({stage, "all"} & set(refresh or [])) for stage in STAGES}
    timer = StageTimer()

    sft = sft_stages(config, redo, timer)

    # Promotion: the registry keeps the best adapter per (model, data, held-out set); this run replaces it
    # only if better on the same held-out rows.
    with timer("promote"):
        promotion = promote_task(config, run_dir.name, sft.trained, sft.evaluated)

    # Report: the run folder (links to the stage folders, summary, report.md / .html) and the artifacts.
    summary = build_summary(run_dir, config, sft, promotion, timer.seconds)
    # Model card: README.md with the Hub's metadata in the adapter (and merged) folder, from the records.
    model_card_task(summary)
    report_task(summary, sft.evaluated.generations_file, sft.stage_folders())

    # Tracking (opt-in): the run, its curves, report and adapter in MLflow; a promoted adapter registered.
    track_finetune(config, run_dir, sft.trained, sft.evaluated, promotion)

    # Publishing (opt-in, output.push_to_hub): a promoted run's adapter, card and report to the Hugging Face Hub;
    # last, so a failed publish fails a run whose folder is already complete.
    push_task(summary, config.output)
    return str(run_dir)


if __name__ == "__main__":
    print(finetune())
