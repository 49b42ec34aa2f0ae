"""Prefect tasks: DPO evaluated against SFT (held-out pairs, the SFT held-out rows, the eval prompts), and
promotion of the better of the two. In a module of their own, so that evaluation code is not part of the
training stages' code version (a change to evaluation reruns evaluation only)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from smoltune.config import PipelineConfig
from smoltune.files import atomic_write_json
from smoltune.pipeline.cache import Stage
from smoltune.pipeline.keys import evaluate_preference_parts
from smoltune.pipeline.registry import promote
from smoltune.records import (
    Evaluated,
    PreferenceEvaluated,
    PreferencePrepared,
    PreferenceTrained,
    PromotionDecision,
    ResolvedModel,
    Trained,
)
from smoltune.redaction import redact
from smoltune.report.markdown import promotion_section

EVALUATE = Stage("evaluate_preference", PreferenceEvaluated, evaluate_preference_parts, __name__)
PROMOTION_ARTIFACT_KEY = "smoltune-promotion"


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
            pair_max_length=pref.max_length,
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
    create_markdown_artifact(
        key=PROMOTION_ARTIFACT_KEY,
        markdown="\n\n".join(promotion_section(d.model_dump(mode="json")) for d in decisions),
        description=f"smoltune promotion decisions (SFT, then DPO) for run {run_name}",
    )
    return decisions
