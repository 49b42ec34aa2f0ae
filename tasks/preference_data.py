"""Prefect tasks: the preference pairs fetched (built on-policy from the SFT model, or read from a source),
gated with Great Expectations, then split and formatted with the SFT job's template. Cached like the SFT data
stages: by the pairs' content (and, for the built-in pairs, the SFT training they were answered by)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import get_run_logger, task

from data_checks.pairs import check_pairs
from data_checks.suite import DataValidationError
from smoltune.config import PreferenceConfig
from smoltune.data.split import row_key
from smoltune.data.tokens import load_tokenizer
from smoltune.files import atomic_write_json, read_jsonl
from smoltune.pipeline.cache import Stage
from smoltune.pipeline.keys import fetch_preferences_parts, prepare_preferences_parts, validate_preferences_parts
from smoltune.preference.stage import fetch_pairs, prepare_pairs
from smoltune.records import (
    CheckSummary,
    PreferencePairs,
    PreferencePrepared,
    Prepared,
    ResolvedModel,
    Trained,
    Validated,
)

FETCH = Stage("fetch_preferences", PreferencePairs, fetch_preferences_parts, __name__)
VALIDATE = Stage("validate_preferences", Validated, validate_preferences_parts, __name__)
PREPARE = Stage("prepare_preferences", PreferencePrepared, prepare_preferences_parts, __name__)


@task(name=FETCH.name, cache_policy=FETCH.cache_policy(), persist_result=True, result_serializer="json")
def fetch_preferences_task(
    pref: PreferenceConfig, model: ResolvedModel, trained: Trained, template: str, cache_dir: str, refresh: bool = False
) -> PreferencePairs:
    """No retries: the URL reader retries transient failures itself."""
    inputs = {"pref": pref, "model": model, "trained": trained, "template": template}
    folder = FETCH.task_folder(cache_dir, **inputs)
    pairs = FETCH.run(folder, lambda out: fetch_pairs(pref, out, model, trained.result, template), refresh)
    logger = get_run_logger()
    logger.info("fetched %d %s pairs from %s (%s)", pairs.pairs, pairs.shape, pairs.source, pairs.identity)
    if pairs.on_policy:
        logger.info("%d rejected answers are the SFT model's own wrong answers", pairs.on_policy)
    return pairs


@task(name=VALIDATE.name, cache_policy=VALIDATE.cache_policy(), persist_result=True, result_serializer="json")
def validate_preferences_task(
    pairs: PreferencePairs,
    model: ResolvedModel,
    prepared: Prepared,
    pref: PreferenceConfig,
    template: str,
    cache_dir: str,
    refresh: bool = False,
) -> Validated:
    """The pair gate; raises (never cached) when a critical check fails, before any DPO step."""
    inputs = {"pairs": pairs, "model": model, "prepared": prepared, "pref": pref, "template": template}

    def compute(out: Path) -> Validated:
        held_out = {row_key(r) for r in read_jsonl(prepared.eval_file)}
        tokenizer = load_tokenizer(model.path, model.trust_remote_code)
        outcome = check_pairs(
            read_jsonl(pairs.pairs_file), tokenizer, template, pref.max_length, pref.min_pairs, held_out,
            out / "data_docs",
        )  # fmt: skip
        report = atomic_write_json(out / "validation.json", outcome.to_dict())
        for check in outcome.warnings:
            get_run_logger().warning("pair warning: %s", check.describe())
        if not outcome.success:
            raise DataValidationError(outcome, pairs.source, str(report))
        return Validated(
            success=True,
            row_count=outcome.row_count,
            checks=[CheckSummary(**asdict(c)) for c in outcome.checks],
            data_docs=outcome.data_docs,
            report_file=str(report),
        )

    result = VALIDATE.run(VALIDATE.task_folder(cache_dir, **inputs), compute, refresh)
    get_run_logger().info("pair gate passed: %d expectations on %d pairs", len(result.checks), result.row_count)
    return result


@task(name=PREPARE.name, cache_policy=PREPARE.cache_policy(), persist_result=True, result_serializer="json")
def prepare_preferences_task(
    pairs: PreferencePairs,
    validated: Validated,
    model: ResolvedModel,
    pref: PreferenceConfig,
    template: str,
    cache_dir: str,
    refresh: bool = False,
) -> PreferencePrepared:
    def compute(out: Path) -> PreferencePrepared:
        tokenizer = load_tokenizer(model.path, model.trust_remote_code) if template == "chat" else None
        return prepare_pairs(pairs.pairs_file, pref, template, out, tokenizer, validated.key)

    inputs = {"pairs": pairs, "validated": validated, "model": model, "pref": pref, "template": template}
    prepared = PREPARE.run(PREPARE.task_folder(cache_dir, **inputs), compute, refresh)
    logger = get_run_logger()
    logger.info("prepared %d training and %d held-out pairs", prepared.train_pairs, prepared.eval_pairs)
    if prepared.note:
        logger.warning(prepared.note)
    return prepared
