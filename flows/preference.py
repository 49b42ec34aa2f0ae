"""The preference flow: the SFT stages (cached, unchanged), then DPO on preference pairs, evaluated against SFT.

    smoltune run --config configs/dpo.yaml                # through the CLI
    python -m flows.preference                            # the default DPO job

fetch_preferences -> validate_preferences -> prepare_preferences -> reference_logps -> train_preference ->
evaluate_preference -> promote -> model card -> report -> [track] -> [publish]. Every stage is cached like the
SFT ones; the reference, training and evaluation keys (and the built-in pairs') include the SFT training's key,
so a retrained SFT model reruns them, and changing `preference.beta` reruns only training and what follows it.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect.states import State

from flows.finetune import STAGES as SFT_STAGES
from flows.finetune import sft_stages
from smoltune.config import PipelineConfig, PreferenceConfig
from smoltune.errors import ConfigError
from smoltune.pipeline.runs import (
    RunRecords,
    StageTimer,
    begin_flow_run,
    build_summary,
    with_preference,
)
from smoltune.pipeline.stopping import stoppable_flow, unless_stopped
from smoltune.preference.runner import prestarted_preference
from smoltune.records import (
    PreferenceEvaluated,
    PreferencePairs,
    PreferencePrepared,
    PreferenceTrained,
    ReferenceScored,
    Validated,
)
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


@dataclass(frozen=True)
class PreferenceRecords:
    """The records of the preference stages, in pipeline order."""

    pairs: PreferencePairs
    gated: Validated
    prepared: PreferencePrepared
    reference: ReferenceScored | None
    trained: PreferenceTrained
    evaluated: PreferenceEvaluated

    def stage_folders(self) -> dict[str, str]:
        """Link name in a run folder -> stage folder (RunRecords.stage_folders gives the SFT ones)."""
        return {"preference_train": self.trained.folder, "preference_evaluation": self.evaluated.folder}


def pair_stages(
    config: PipelineConfig, pref: PreferenceConfig, sft: RunRecords, redo: dict[str, bool], timer: StageTimer
) -> tuple[PreferencePairs, Validated, PreferencePrepared]:
    """The pairs fetched (or built on-policy), gated and prepared."""
    cache, template, model = config.output.cache_root, config.data.template, sft.model
    with timer("fetch_preferences"):
        pairs = fetch_preferences_task(pref, model, sft.trained, template, cache, redo["fetch_preferences"])
    with timer("validate_preferences"):
        gated = validate_preferences_task(
            pairs, model, sft.prepared, pref, template, cache, redo["validate_preferences"]
        )
    with timer("prepare_preferences"):
        prepared = prepare_preferences_task(pairs, gated, model, pref, template, cache, redo["prepare_preferences"])
    return pairs, gated, prepared


def preference_stages(
    config: PipelineConfig, sft: RunRecords, redo: dict[str, bool], timer: StageTimer
) -> PreferenceRecords:
    """Fetch, gate and prepare the pairs, the reference's log-probs, DPO training and its evaluation against SFT:
    each a cached task on top of `sft` (this flow and a comparison's DPO variants run them)."""
    pref, cache = config.preference, config.output.cache_root
    if pref is None:
        raise ConfigError(["preference: the preference stages need a preference section (see configs/dpo.yaml)"])
    model, trained = sft.model, sft.trained

    # The preference process starts now: its imports overlap the pairs' stages (killed unused when cached).
    with prestarted_preference():
        # Pairs: built on-policy from the SFT model (or read from a source), gated before any DPO step (a pair
        # repeating an SFT held-out prompt would leak the evaluation), split and formatted with the SFT template.
        pairs, gated, prepared = pair_stages(config, pref, sft, redo, timer)
        # The reference's log-probs once (a stage of their own: a new beta does not recompute them), then DPO
        # training in its own process, resumable like SFT.
        reference = None
        if pref.precompute_reference:
            with timer("reference_logps"):
                reference = unless_stopped(
                    reference_task(model, trained, prepared, pref, cache, redo["reference_logps"])
                )
        with timer("train_preference"):
            dpo = unless_stopped(
                train_preference_task(model, trained, prepared, reference, pref, cache, redo["train_preference"])
            )
    # DPO against SFT on held-out pairs and the SFT held-out rows (what promotion and a comparison read).
    with timer("evaluate_preference"):
        evaluated = evaluate_preference_task(
            model, trained, dpo, prepared, sft.prepared.eval_file, sft.evaluated, config, cache,
            redo["evaluate_preference"],
        )  # fmt: skip
    return PreferenceRecords(pairs, gated, prepared, reference, dpo, evaluated)


# A signalled training ends the run Cancelled (its checkpoint kept), not Failed: see stoppable_flow.
@stoppable_flow(name="preference")
def preference(config: PipelineConfig = DEFAULT, refresh: list[str] | None = None) -> str | State:
    """SFT (cached) then DPO per `config.preference`; returns the run folder's path (a Cancelled state when a
    signal stopped a training)."""
    config, run_dir = begin_flow_run(config, "flow parameter config")
    if config.preference is None:
        raise ConfigError(["preference: the preference flow needs a preference section (see configs/dpo.yaml)"])
    redo = {stage: bool({stage, "all"} & set(refresh or [])) for stage in STAGES}
    timer = StageTimer()

    # SFT first: the same tasks and keys as the finetune flow, so an SFT run already done is a cache hit.
    sft = sft_stages(config, redo, timer)
    # DPO on the SFT result: pairs, their gate and split, the reference, training, evaluation against SFT.
    dpo = preference_stages(config, sft, redo, timer)

    # Promotion: SFT then DPO offered to the registry on the same held-out rows; it keeps the better adapter.
    with timer("promote"):
        decisions = promote_preference_task(
            config, run_dir.name, sft.trained, sft.evaluated, dpo.trained, dpo.evaluated
        )

    # Report: the SFT run's report with a preference section.
    summary = with_preference(
        build_summary(run_dir, config, sft, decisions[-1], timer.seconds),
        dpo.pairs, dpo.gated, dpo.prepared, dpo.reference, dpo.trained, dpo.evaluated, decisions,
    )  # fmt: skip
    folders = sft.stage_folders() | dpo.stage_folders()
    model_card_task(summary)  # the DPO and SFT adapters' (and merged model's) cards, from the records
    report_task(summary, dpo.evaluated.generations_file, folders)

    # Tracking (opt-in): the DPO run (with the SFT curves) in MLflow; a promoted adapter registered.
    track_preference(config, run_dir, sft.trained, dpo.trained, dpo.evaluated, decisions[-1])

    # Publishing (opt-in, output.push_to_hub): the DPO adapter when it was promoted, last (see flows/finetune.py).
    push_task(summary, config.output)
    return str(run_dir)


if __name__ == "__main__":
    print(preference())
