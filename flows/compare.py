"""The comparison flow: LoRA r=16 vs LoRA r=256 vs full fine-tuning on the same prepared data.

    smoltune compare --config configs/compare.yaml

Data is fetched, validated and prepared once; each variant trains (in its own process) and is evaluated in
its own sub-folder of the run; one report puts the figures side by side and checks the seed's claims.
"""

from __future__ import annotations

from prefect import flow

from smoltune.config import CompareConfig, variant_config
from smoltune.pipeline.runs import begin_flow_run
from tasks.compare import VariantResult, compare_report_task
from tasks.evaluate import evaluate_task
from tasks.evaluate_base import evaluate_base_task
from tasks.fetch import fetch_dataset_task
from tasks.model import resolve_model_task
from tasks.prepare import prepare_dataset_task
from tasks.track import track_compare
from tasks.train import train_task
from tasks.validate import validate_dataset_task


@flow(name="compare")
def compare(config: CompareConfig) -> str:
    """Train and evaluate every variant of `config`; returns the run folder with the comparison report."""
    # The same checks as the CLI's for runs started from the Prefect API or UI, before anything runs.
    shared, run_dir = begin_flow_run(config.pipeline, "flow parameter config.pipeline")
    config = config.model_copy(update={"pipeline": shared})
    cache = shared.output.cache_root

    # Shared stages (cached like the finetune flow's): one model, one dataset, one gate, one split.
    model = resolve_model_task(shared.model, cache)
    fetched = fetch_dataset_task(shared.data, cache)
    validated = validate_dataset_task(fetched, model, shared.data, shared.validation, shared.train, cache)
    prepared = prepare_dataset_task(fetched, validated, model, shared.data, cache)

    # One variant at a time: two trainings at once would share two CPU cores and distort every figure.
    results = []
    for variant in config.variants:
        job = variant_config(config, variant)
        trained = train_task(model, prepared, job, cache)
        # The base's figures are keyed without the training: measured for the first variant, Cached for the others.
        base = evaluate_base_task(model, trained, prepared, job, cache)
        evaluated = evaluate_task(model, trained, prepared, base, job, cache)
        (run_dir / variant.name).mkdir()
        (run_dir / variant.name / "train").symlink_to(trained.folder, target_is_directory=True)
        (run_dir / variant.name / "evaluation").symlink_to(evaluated.folder, target_is_directory=True)
        results.append(VariantResult(name=variant.name, trained=trained, evaluated=evaluated))

    compare_report_task(str(run_dir), results)
    # Tracking (opt-in): one MLflow run for the comparison, each variant nested under it.
    track_compare(config, run_dir, results)
    return str(run_dir)
