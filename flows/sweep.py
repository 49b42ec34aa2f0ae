"""A hyperparameter sweep on Dask: every (rank, learning rate) of a grid trained and evaluated on the same
cached data, the trainings spread over a Dask cluster through Prefect's DaskTaskRunner.

    python -m flows.sweep                                             # a local cluster, the default grid
    SMOLTUNE_DASK_ADDRESS=tcp://scheduler:8786 python -m flows.sweep  # an existing Dask scheduler

Each training holds a slot of its machine's Prefect concurrency limit (`smoltune-training-<host>`, one
training per machine by default; smoltune.pipeline.slots): a cluster of N machines trains N points at once,
two workers on one machine take turns. The workers must reach the same Prefect API (PREFECT_API_URL) and
the same runs folder (shared storage) as the flow; docs/operations.md, "Scale out".
"""

from __future__ import annotations

import os

from prefect.states import State
from prefect_dask import DaskTaskRunner

from smoltune.config import PipelineConfig, build_config
from smoltune.files import atomic_write_json
from smoltune.pipeline.runs import begin_flow_run
from smoltune.pipeline.stopping import stoppable_flow
from smoltune.records import Evaluated, Trained
from tasks.evaluate import evaluate_task
from tasks.evaluate_base import evaluate_base_task
from tasks.fetch import fetch_dataset_task
from tasks.model import resolve_model_task
from tasks.prepare import prepare_dataset_task
from tasks.track import track_sweep
from tasks.train import train_task
from tasks.validate import validate_dataset_task


def dask_runner(address: str | None = None) -> DaskTaskRunner:
    """An existing scheduler when an address is given (or SMOLTUNE_DASK_ADDRESS is set), else a local cluster."""
    address = address or os.environ.get("SMOLTUNE_DASK_ADDRESS")
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": 1, "processes": True})


def grid_configs(base: PipelineConfig, ranks: list[int], learning_rates: list[float]) -> list[PipelineConfig]:
    """One job per (rank, learning rate); alpha follows the rank to keep LoRA's scale."""
    configs = []
    for rank in ranks:
        for lr in learning_rates:
            data = base.model_dump(mode="json")
            data["train"]["lora"].update({"r": rank, "alpha": rank})
            data["train"]["learning_rate"] = lr
            configs.append(build_config(data, f"sweep r={rank} lr={lr}"))
    return configs


# A signalled training ends the run Cancelled (its checkpoint kept), not Failed: see stoppable_flow.
@stoppable_flow(name="sweep", task_runner=dask_runner())
def sweep(
    config: PipelineConfig = PipelineConfig(),  # noqa: B008
    ranks: list[int] = [8, 16],  # noqa: B006 - Prefect renders list defaults in the UI form
    learning_rates: list[float] = [2e-4],  # noqa: B006
) -> list[dict] | State:
    """Train and evaluate every grid point; returns one row of figures per point (also in the run folder's
    sweep.json), or a Cancelled state when a signal stopped a training."""
    # The same checks as the CLI's for runs started from the Prefect API or UI, before anything runs.
    config, run_dir = begin_flow_run(config, "flow parameter config")
    cache = config.output.cache_root
    model = resolve_model_task(config.model, cache)
    fetched = fetch_dataset_task(config.data, cache)
    validated = validate_dataset_task(fetched, model, config.data, config.validation, config.train, cache)
    prepared = prepare_dataset_task(fetched, validated, model, config.data, cache)

    jobs = grid_configs(config, ranks, learning_rates)
    trained = [train_task.submit(model, prepared, job, cache) for job in jobs]
    # The base's figures are keyed without the training (its precision only): one measurement for the grid, or
    # one per precision where the machines differ; the other points find it Cached, or wait for it.
    bases = [evaluate_base_task.submit(model, t, prepared, job, cache) for t, job in zip(trained, jobs, strict=True)]
    evaluated = [
        evaluate_task.submit(model, t, prepared, b, job, cache) for t, b, job in zip(trained, bases, jobs, strict=True)
    ]
    rows = [sweep_row(job, t.result(), e.result()) for job, t, e in zip(jobs, trained, evaluated, strict=True)]
    atomic_write_json(run_dir / "sweep.json", rows)
    # Tracking (opt-in): one MLflow run for the sweep, each grid point nested under it.
    track_sweep(config, run_dir, jobs, [t.result() for t in trained], [e.result() for e in evaluated])
    return rows


def sweep_row(job: PipelineConfig, trained: Trained, evaluated: Evaluated) -> dict:
    """One grid point's figures."""
    result, figures = trained.result, evaluated.figures
    return {
        "lora_rank": job.train.lora.r,
        "host": result.host,
        "started_at": result.started_at,
        "learning_rate": job.train.learning_rate,
        "train_seconds": result.train_seconds,
        "final_train_loss": result.losses[-1],
        "eval_loss": figures.eval_loss_tuned,
        "accuracy": figures.accuracy_tuned,
        "output_dir": result.output_dir,
    }


if __name__ == "__main__":
    for row in sweep():
        print(row)
