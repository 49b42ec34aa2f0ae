"""Prefect tasks: the reference's log-probabilities (once, cached) and DPO training, each in its own process.
Each cached by the SFT training's key, the pairs' content, its settings and its code: changing
`preference.beta` reruns training and what follows, not the reference."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from smoltune.config import PreferenceConfig
from smoltune.pipeline.cache import Stage
from smoltune.pipeline.keys import reference_parts, train_preference_parts
from smoltune.pipeline.slots import training_slot
from smoltune.pipeline.stopping import cancelled_task_when_stopped
from smoltune.preference.runner import run_preference
from smoltune.preference.spec import PreferenceSpec
from smoltune.records import (
    PreferencePrepared,
    PreferenceTrained,
    ReferenceScored,
    ResolvedModel,
    Trained,
)

REFERENCE = Stage("reference_logps", ReferenceScored, reference_parts, __name__)
TRAIN = Stage("train_preference", PreferenceTrained, train_preference_parts, __name__, resumable=True)
LOG_EVERY = 5


def _spec(phase: str, model: ResolvedModel, trained: Trained, train_file: str, out: Path, pref: PreferenceConfig):
    return PreferenceSpec(
        phase=phase,  # type: ignore[arg-type]
        model_path=model.path,
        sft_output=trained.result.output_dir,
        train_file=train_file,
        work_dir=str(out),
        settings=pref.model_dump(mode="json"),
        precision=trained.result.precision,
        trust_remote_code=model.trust_remote_code,
        base_model_id=model.hub_id,
    )


@task(name=REFERENCE.name, cache_policy=REFERENCE.cache_policy(), persist_result=True, result_serializer="json")
@cancelled_task_when_stopped  # a signal ends the task run Cancelled, kept out of the cache
def reference_task(
    model: ResolvedModel,
    trained: Trained,
    pairs_prepared: PreferencePrepared,
    pref: PreferenceConfig,
    cache_dir: str,
    refresh: bool = False,
) -> ReferenceScored:
    """The SFT model's log-probs of every training pair, by DPOTrainer's own precomputation, in a process."""
    import time

    def compute(out: Path) -> ReferenceScored:
        started = time.perf_counter()
        spec = _spec("reference", model, trained, pairs_prepared.train_file, out, pref)
        scored = run_preference(spec, slot=training_slot())
        return ReferenceScored(
            train_file=str(scored),
            pairs=pairs_prepared.train_pairs,
            precision=trained.result.precision,
            seconds=round(time.perf_counter() - started, 2),
        )

    inputs = {"model": model, "trained": trained, "pairs_prepared": pairs_prepared, "pref": pref}
    scored = REFERENCE.run(REFERENCE.task_folder(cache_dir, **inputs), compute, refresh)
    get_run_logger().info("reference log-probs of %d pairs (%s)", scored.pairs, scored.precision)
    return scored


@task(name=TRAIN.name, cache_policy=TRAIN.cache_policy(), persist_result=True, result_serializer="json")
@cancelled_task_when_stopped  # a signal ends the task run Cancelled, kept out of the cache
def train_preference_task(
    model: ResolvedModel,
    trained: Trained,
    pairs_prepared: PreferencePrepared,
    reference: ReferenceScored | None,
    pref: PreferenceConfig,
    cache_dir: str,
    refresh: bool = False,
) -> PreferenceTrained:
    """No retries: rerunning resumes from the last complete checkpoint in the stage folder."""
    logger = get_run_logger()

    def compute(out: Path) -> PreferenceTrained:
        progress = create_progress_artifact(progress=0.0, description="DPO steps done (%)")

        def on_step(record: dict) -> None:
            step, total = record["step"], record["max_steps"]
            if step % LOG_EVERY == 0 or step in (1, total):
                logger.info("DPO step %d/%d loss %.4f", step, total, record["loss"])
                update_progress_artifact(progress, progress=100.0 * step / total)

        train_file = reference.train_file if reference is not None else pairs_prepared.train_file
        result = run_preference(_spec("train", model, trained, train_file, out, pref), on_step, training_slot())
        return PreferenceTrained(result=result, sft_key=trained.key)  # type: ignore[arg-type]

    inputs = {"model": model, "trained": trained, "pairs_prepared": pairs_prepared, "reference": reference}
    done = TRAIN.run(TRAIN.task_folder(cache_dir, pref=pref, **inputs), compute, refresh)
    result = done.result
    logger.info("DPO: %d steps in %.1f s (%.1f tokens/s)", result.steps, result.train_seconds, result.tokens_per_second)
    return done
