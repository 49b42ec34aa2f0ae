"""Prefect tasks: the reference's log-probabilities (once, cached), DPO training in its own process, the
evaluation of DPO against SFT, and promotion of the better of the two. Each cached by the SFT training's key,
the pairs' content, its settings and its code: changing `preference.beta` reruns training and what follows."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from smoltune.config import PipelineConfig, PreferenceConfig
from smoltune.files import atomic_write_json
from smoltune.pipeline.cache import Stage
from smoltune.pipeline.keys import evaluate_preference_parts, reference_parts, train_preference_parts
from smoltune.pipeline.registry import promote
from smoltune.pipeline.slots import training_slot
from smoltune.preference.runner import run_preference
from smoltune.preference.spec import PreferenceSpec
from smoltune.records import (
    Evaluated,
    PreferenceEvaluated,
    PreferencePrepared,
    PreferenceTrained,
    PromotionDecision,
    ReferenceScored,
    ResolvedModel,
    Trained,
)
from smoltune.redaction import redact

REFERENCE = Stage("reference_logps", ReferenceScored, reference_parts, __name__)
TRAIN = Stage("train_preference", PreferenceTrained, train_preference_parts, __name__, resumable=True)
EVALUATE = Stage("evaluate_preference", PreferenceEvaluated, evaluate_preference_parts, __name__)
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


@task(name=EVALUATE.name, cache_policy=EVALUATE.cache_policy(), persist_result=True, result_serializer="json")
def evaluate_preference_task(
    model: ResolvedModel,
    trained: Trained,
    dpo: PreferenceTrained,
    pairs_prepared: PreferencePrepared,
    sft_eval_file: str,
    evaluated: Evaluated,
    config: PipelineConfig,
    cache_dir: str,
    refresh: bool = False,
) -> PreferenceEvaluated:
    from smoltune.preference.evaluate import PreferenceEval, evaluate_preference
    from smoltune.train.precision import DTYPES

    pref = config.preference
    assert pref is not None

    def compute(out: Path) -> PreferenceEvaluated:
        job = PreferenceEval(
            model_path=model.path,
            adapters={"sft": trained.result.output_dir, "dpo": dpo.result.output_dir},
            dtype=DTYPES[trained.result.precision],
            trust_remote_code=model.trust_remote_code,
            pairs_file=pairs_prepared.eval_file,
            eval_rows_file=sft_eval_file,
            template=config.data.template,
            max_length=config.train.max_seq_length,
        )
        figures, as_tuned, scored, answers = evaluate_preference(job, evaluated.figures, config.eval, pref.beta)
        sft_generations = json.loads(Path(evaluated.generations_file).read_text())
        generations = [{**g, "sft": g["tuned"], "dpo": a} for g, a in zip(sft_generations, answers, strict=True)]
        return PreferenceEvaluated(
            figures=figures,
            as_tuned=as_tuned,
            heldout_sha256=evaluated.heldout_sha256,
            generations_file=str(atomic_write_json(out / "generations.json", generations)),
            pairs_file=str(atomic_write_json(out / "pairs.json", scored)),
        )

    inputs = {"dpo": dpo, "pairs_prepared": pairs_prepared, "evaluated": evaluated, "config": config}
    result = EVALUATE.run(EVALUATE.task_folder(cache_dir, **inputs), compute, refresh)
    figures = result.figures
    get_run_logger().info(
        "held-out pairs: reward accuracy %.3f, margin %.4f; accuracy base %s -> SFT %s -> DPO %s",
        figures.reward_accuracy, figures.reward_margin, *(figures.accuracy.get(k) for k in ("base", "sft", "dpo")),
    )  # fmt: skip
    return result


@task(name="promote_preference", cache_policy=NO_CACHE)
def promote_preference_task(
    config: PipelineConfig, run_name: str, trained: Trained, evaluated: Evaluated, dpo: PreferenceTrained,
    dpo_evaluated: PreferenceEvaluated,
) -> list[PromotionDecision]:  # fmt: skip
    """SFT then DPO offered to the registry on the same held-out rows: it keeps the better (or what it had)."""
    offers = [
        (f"{run_name}-sft", trained.result.output_dir, evaluated.figures),
        (run_name, dpo.result.output_dir, dpo_evaluated.as_tuned),
    ]
    decisions = [
        promote(
            config.output.registry_file,
            config.model.source,
            redact(config.data.source),
            name,
            output_dir,
            figures,
            evaluated.heldout_sha256,
        )  # fmt: skip
        for name, output_dir, figures in offers
    ]
    for (name, _, _), decision in zip(offers, decisions, strict=True):
        get_run_logger().info("%s %s: %s", name, "promoted" if decision.promoted else "not promoted", decision.reason)
    return decisions
