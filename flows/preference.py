"""The preference flow: the SFT stages (cached, unchanged), then DPO on preference pairs, evaluated against SFT.

    smoltune run --config configs/dpo.yaml                # through the CLI
    python -m flows.preference                            # the default DPO job

fetch_preferences -> validate_preferences -> prepare_preferences -> reference_logps -> train_preference ->
evaluate_preference -> promote -> model card -> report -> [track] -> [publish]. Every stage is cached like the
SFT ones; the reference, training and evaluation keys (and the built-in pairs') include the SFT training's key,
so a retrained SFT model reruns them, and changing `preference.beta` reruns only training and what follows it.
"""

from __future__ import annotations

from prefect import flow

from flows.finetune import STAGES as SFT_STAGES
from flows.finetune import sft_stages
from smoltune.config import PipelineConfig, PreferenceConfig
from smoltune.errors import ConfigError
from smoltune.pipeline.runs import StageTimer, begin_flow_run, build_summary, with_preference
from tasks.preference_data import fetch_preferences_task, prepare_preferences_task, validate_preferences_task
from tasks.preference_evaluate import evaluate_preference_task, promote_preference_task
from tasks.preference_train import reference_task, train_preference_task
from tasks.publish import model_card_task, push_task
from tasks.report import report_task
from tasks.track import track_preference

PREFERENCE_STAGES = (
    "fetch_preferences",
    "validate_preferences",
    "prepare_preferences",
    "reference_logps",
    "train_preference",
    "evaluate_preference",
)
STAGES = SFT_STAGES + PREFERENCE_STAGES
DEFAULT = PipelineConfig(preference=PreferenceConfig())


@flow(name="preference")
def preference(config: PipelineConfig = DEFAULT, refresh: list[str] | None = None) -> str:
    """SFT (cached) then DPO per `config.preference`; returns the run folder's path."""
    config, run_dir = begin_flow_run(config, "flow parameter config")
    if config.preference is None:
        raise ConfigError(["preference: the preference flow needs a preference section (see configs/dpo.yaml)"])
    pref, cache, template = config.preference, config.output.cache_root, config.data.template
    redo = {stage: bool({stage, "all"} & set(refresh or [])) for stage in STAGES}
    timer = StageTimer()

    # SFT first: the same tasks and keys as the finetune flow, so an SFT run already done is a cache hit.
    sft = sft_stages(config, redo, timer)
    model, trained = sft.model, sft.trained

    # Pairs: built on-policy from the SFT model (or read from a source), gated before any DPO step (a pair
    # repeating an SFT held-out prompt would leak the evaluation), split and formatted with the SFT template.
    with timer("fetch_preferences"):
        pairs = fetch_preferences_task(pref, model, trained, template, cache, redo["fetch_preferences"])
    with timer("validate_preferences"):
        gated = validate_preferences_task(
            pairs, model, sft.prepared, pref, template, cache, redo["validate_preferences"]
        )
    with timer("prepare_preferences"):
        prepared = prepare_preferences_task(pairs, gated, model, pref, template, cache, redo["prepare_preferences"])

    # The reference's log-probs once (a stage of their own: a new beta does not recompute them), then DPO
    # training in its own process, resumable like SFT.
    reference = None
    if pref.precompute_reference:
        with timer("reference_logps"):
            reference = reference_task(model, trained, prepared, pref, cache, redo["reference_logps"])
    with timer("train_preference"):
        dpo = train_preference_task(model, trained, prepared, reference, pref, cache, redo["train_preference"])

    # DPO against SFT on held-out pairs and the SFT held-out rows; the registry keeps the better adapter.
    with timer("evaluate_preference"):
        evaluated = evaluate_preference_task(
            model, trained, dpo, prepared, sft.prepared.eval_file, sft.evaluated, config, cache,
            redo["evaluate_preference"],
        )  # fmt: skip
    with timer("promote"):
        decisions = promote_preference_task(config, run_dir.name, trained, sft.evaluated, dpo, evaluated)

    # Report: the SFT run's report with a preference section.
    summary = with_preference(
        build_summary(run_dir, config, sft, decisions[-1], timer.seconds),
        pairs, gated, prepared, reference, dpo, evaluated, decisions,
    )  # fmt: skip
    folders = sft.stage_folders() | {"preference_train": dpo.folder, "preference_evaluation": evaluated.folder}
    model_card_task(summary)  # the DPO and SFT adapters' (and merged model's) cards, from the records
    report_task(summary, evaluated.generations_file, folders)

    # Tracking (opt-in): the DPO run (with the SFT curves) in MLflow; a promoted adapter registered.
    track_preference(config, run_dir, trained, dpo, evaluated, decisions[-1])

    # Publishing (opt-in, output.push_to_hub): the DPO adapter when it was promoted, last (see flows/finetune.py).
    push_task(summary, config.output)
    return str(run_dir)


if __name__ == "__main__":
    print(preference())
