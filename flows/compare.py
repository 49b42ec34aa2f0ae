"""The comparison flow: LoRA r=16 vs LoRA r=256 vs full fine-tuning on the same prepared data, and DPO on top of
any variant that sets `preference`.

    smoltune compare --config configs/compare.yaml

Data is fetched, validated and prepared once; each variant trains (in its own process) and is evaluated in
its own sub-folder of the run; a variant with a `preference` section then runs the preference flow's stages on
its SFT result; one report puts the figures side by side and checks the seed's claims.
"""

from __future__ import annotations

from pathlib import Path

from prefect.states import State

from flows.finetune import data_stages
from flows.preference import STAGES, preference_stages
from smoltune.config import CompareConfig, PipelineConfig, Variant, variant_jobs
from smoltune.pipeline.runs import RunRecords, StageTimer, begin_flow_run
from smoltune.pipeline.stopping import stoppable_flow, unless_stopped
from smoltune.records import Fetched, Prepared, ResolvedModel, Validated
from smoltune.train.runner import prestarted_training
from tasks.compare import VariantResult, compare_report_task
from tasks.evaluate import evaluate_task
from tasks.evaluate_base import evaluate_base_task
from tasks.model import resolve_model_task
from tasks.track import track_compare
from tasks.train import train_task

# A comparison has no `refresh`: every stage, the preference ones included, is taken from the cache when it can be.
NO_REFRESH = dict.fromkeys(STAGES, False)


def _link(folder: Path, stage_folders: dict[str, str]) -> None:
    """The variant's sub-folder of the run: a link to each stage folder it used."""
    folder.mkdir()
    for name, target in stage_folders.items():
        (folder / name).symlink_to(target, target_is_directory=True)


def variant_result(
    variant: Variant, job: PipelineConfig, shared: tuple[ResolvedModel, Fetched, Validated, Prepared], run_dir: Path
) -> VariantResult:
    """One variant's training and evaluations on the shared stages' records, linked under the run folder."""
    model, fetched, validated, prepared = shared
    cache = job.output.cache_root
    # SFT: keyed by the variant's train settings only, so a DPO variant whose SFT settings equal another
    # variant's finds its training (and evaluations) Cached.
    trained = unless_stopped(train_task(model, prepared, job, cache))
    # The base's figures are keyed without the training: measured for the first variant, Cached for the others.
    base = evaluate_base_task(model, trained, prepared, job, cache)
    evaluated = evaluate_task(model, trained, prepared, base, job, cache)
    sft = RunRecords(model, fetched, validated, prepared, trained, evaluated)
    # DPO variants: the preference flow's stages on this variant's SFT result, evaluated on the same held-out rows
    # as every variant.
    dpo = preference_stages(job, sft, NO_REFRESH, StageTimer()) if job.preference is not None else None
    links = {"train": trained.folder, "evaluation": evaluated.folder} | (dpo.stage_folders() if dpo else {})
    _link(run_dir / variant.name, links)
    return VariantResult(
        name=variant.name,
        trained=trained,
        evaluated=evaluated,
        dpo=dpo.trained if dpo else None,
        dpo_evaluated=dpo.evaluated if dpo else None,
    )


# A signalled training ends the run Cancelled (its checkpoint kept), not Failed: see stoppable_flow.
@stoppable_flow(name="compare")
def compare(config: CompareConfig) -> str | State:
    """Train and evaluate every variant of `config`; returns the run folder with the comparison report (a
    Cancelled state when a signal stopped a training)."""
    # The same checks as the CLI's for runs started from the Prefect API or UI, before anything runs: the shared
    # job, then every variant as a job of its own (a DPO variant as the preference flow would check it).
    shared, run_dir = begin_flow_run(config.pipeline, "flow parameter config.pipeline")
    config = config.model_copy(update={"pipeline": shared})
    jobs = variant_jobs(config, "flow parameter config")
    cache = shared.output.cache_root

    # Shared stages (cached like the finetune flow's): one model, one dataset, one gate, one split. The first
    # variant's training process starts with them, importing meanwhile (flows/finetune.py).
    model = resolve_model_task(shared.model, cache)
    with prestarted_training(jobs[0].train):
        fetched, validated, prepared = data_stages(shared, model, NO_REFRESH, StageTimer())
        shared_records = (model, fetched, validated, prepared)
        first = variant_result(config.variants[0], jobs[0], shared_records, run_dir)
    # One variant at a time: two trainings at once would share two CPU cores and distort every figure.
    variants = zip(config.variants[1:], jobs[1:], strict=True)
    results = [first, *(variant_result(variant, job, shared_records, run_dir) for variant, job in variants)]

    compare_report_task(str(run_dir), results)
    # Tracking (opt-in): one MLflow run for the comparison, each variant nested under it.
    track_compare(config, run_dir, results)
    return str(run_dir)
