"""The pure parts of tracking: params flattened within MLflow's limits and redacted, curves with their steps,
figures; the settings checked up front and kept out of every cache key; a tracking server that is down or
wrong ends in a warning, never an exception."""

from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from pytest_httpserver import HTTPServer

from smoltune.config import TrackingConfig, load_config
from smoltune.errors import ConfigError
from smoltune.pipeline import keys
from smoltune.tracking.content import (
    PARAM_VALUE_LIMIT,
    PARAMS_PER_BATCH,
    TrackedRun,
    chunks,
    config_params,
    eval_metrics,
    flatten_params,
    preference_run,
    step_metrics,
    trained_run,
)
from smoltune.tracking.mlflow_runs import store_uri, track
from tests.conftest import free_port
from tests.tracking.conftest import STEPS, eval_figures, job, promotion, run_folder, train_result


def test_flatten_makes_dotted_keys_text_values_within_the_limit() -> None:
    flat = flatten_params(
        {"train": {"lora": {"r": 16, "target_modules": ["q_proj", "v_proj"]}, "bf16": True},
         "data": {"columns": {}, "revision": None, "notes": "x" * 2000},
         "odd": {"a key=with;chars": 1}}
    )  # fmt: skip
    assert flat["train.lora.r"] == "16"
    assert flat["train.lora.target_modules"] == '["q_proj", "v_proj"]'
    assert flat["train.bf16"] == "true" and flat["data.revision"] == "null" and flat["data.columns"] == "{}"
    assert len(flat["data.notes"]) == PARAM_VALUE_LIMIT and flat["data.notes"].endswith("…")
    assert flat["odd.a key_with_chars"] == "1"  # characters MLflow refuses in a name are replaced


def test_secrets_never_reach_the_params(tmp_path: Path) -> None:
    params = config_params(job(tmp_path, "output.notify_server=http://u:pw@127.0.0.1:8000"))
    text = "\n".join(params.values())
    assert "s3cr3t" not in text and "pw@" not in text
    assert params["data.source"] == "https://data.example/rows.jsonl?token=REDACTED"


def test_params_go_in_batches_of_mlflows_size(tmp_path: Path) -> None:
    params = list(config_params(job(tmp_path, "preference={}")).items())
    params += [(f"extra.{i}", str(i)) for i in range(250 - len(params))]
    batches = list(chunks(params, PARAMS_PER_BATCH))
    assert [len(b) for b in batches] == [100, 100, 50]
    assert [p for b in batches for p in b] == params


def test_step_curves_keep_their_steps_and_skip_untracked_values(tmp_path: Path) -> None:
    curves = step_metrics(train_result(tmp_path))
    losses = [(value, step) for key, value, step in curves if key == "train/loss"]
    assert [step for _, step in losses] == list(range(1, STEPS + 1))
    assert losses[0][0] == pytest.approx(2.3)
    norms = [step for key, _, step in curves if key == "train/grad_norm"]
    assert norms == list(range(2, STEPS + 1))  # step 1's NaN norm is absent, not NaN
    assert {key for key, _, _ in curves} == {
        "train/loss",
        "train/learning_rate",
        "train/grad_norm",
        "train/tokens_seen",
    }


def test_eval_figures_base_and_tuned_and_by_family() -> None:
    metrics = eval_metrics(eval_figures())
    assert metrics["eval/eval_loss_base"] == 2.0 and metrics["eval/eval_loss_tuned"] == 1.5
    assert metrics["eval/accuracy_tuned"] == 0.6 and metrics["eval/accuracy_by_family/arithmetic/tuned"] == 0.5
    assert "eval/exact_match_tuned" not in metrics  # None: not measured, not logged as 0
    assert all(math.isfinite(v) for v in metrics.values())


def test_preference_figures_reach_the_metrics_at_every_depth(tmp_path: Path) -> None:
    from smoltune.records import KindAccuracy, PreferenceFigures

    figures = PreferenceFigures(
        eval_pairs=32, beta=0.1, reward_accuracy=0.75, reward_margin=0.05, chosen_logp_change=-0.1,
        rejected_logp_change=-0.6, eval_loss={"base": 3.0, "sft": 1.8, "dpo": 1.79},
        accuracy={"base": 0.0, "sft": 0.1, "dpo": None}, checked_rows=83, eval_seconds=40.0,
        reward_accuracy_by_kind={"own_wrong": KindAccuracy(pairs=30, reward_accuracy=0.8)},
    )  # fmt: skip
    result = train_result(tmp_path)
    metrics = preference_run("r", job(tmp_path), result, result, eval_figures(), figures, None).metrics
    assert metrics["preference/reward_accuracy"] == 0.75 and metrics["preference/eval_loss/sft"] == 1.8
    assert metrics["preference/reward_accuracy_by_kind/own_wrong/reward_accuracy"] == 0.8
    assert metrics["preference/reward_accuracy_by_kind/own_wrong/pairs"] == 30.0
    assert "preference/accuracy/dpo" not in metrics  # None: not measured, not logged as 0


def test_harness_scores_become_metrics_with_their_errors() -> None:
    from smoltune.records import HarnessFigures, HarnessScore

    score = HarnessScore(
        task="smoltune_heldout", metric="exact_match,none", base=0.1, tuned=0.5, base_stderr=0.03, tuned_stderr=None
    )
    harness = HarnessFigures(
        tasks=["smoltune_heldout"], scores=[score], seconds=1.0, lm_eval_version="0.4.13", commands={}
    )
    metrics = eval_metrics(eval_figures().model_copy(update={"harness": harness}))
    name = "eval/harness/smoltune_heldout/exact_match_none"  # MLflow refuses ',' in a name
    assert metrics[f"{name}/tuned"] == 0.5 and metrics[f"{name}/base_stderr"] == 0.03
    assert f"{name}/tuned_stderr" not in metrics


def test_a_trained_run_holds_config_figures_files_and_weights(tmp_path: Path) -> None:
    folder = run_folder(tmp_path)
    files = [folder / "report.md", folder / "missing.html"]
    run = trained_run(folder.name, job(tmp_path), train_result(tmp_path), eval_figures(), promotion(True), files)
    assert run.promoted and run.weights_dir == str(tmp_path) and run.weights_name == "adapter"
    assert run.files == [str(folder / "report.md")]  # only files that exist
    assert run.tags["smoltune.promoted"] == "true" and run.params["train.lora.r"] == "16"
    assert run.metrics["train/tokens_per_second"] == 200.0 and run.metrics["train/final_loss"] == pytest.approx(1.3)


def test_tracking_settings_are_checked_up_front_all_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["tracking.mlflow_uri=ftp://host/x", "tracking.register_model=has space"])
    assert "tracking.mlflow_uri" in str(err.value) and "tracking.register_model" in str(err.value)
    with pytest.raises(ConfigError, match="plain path"):
        load_config(None, ["tracking.mlflow_uri=file:///tmp/mlruns"])
    with pytest.raises(ConfigError, match="set tracking.mlflow_uri too"):
        load_config(None, ["tracking.register_model=smol"])


def test_a_relative_folder_becomes_absolute_and_an_sqlite_store(tmp_path: Path, monkeypatch) -> None:
    prompts = Path("configs/eval_prompts.yaml").resolve()  # the repository's, before leaving it
    monkeypatch.chdir(tmp_path)
    config = load_config(None, ["tracking.mlflow_uri=mlruns", f"eval.prompts_file={prompts}"])
    assert config.tracking.mlflow_uri == str(tmp_path / "mlruns")
    assert store_uri(config.tracking.mlflow_uri) == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert store_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_tracking_never_changes_a_stage_key(tmp_path: Path) -> None:
    """Turning tracking on (or pointing it elsewhere) must rerun no stage: no key may see the section."""
    plain = job(tmp_path)
    tracked = job(tmp_path, "tracking.mlflow_uri=http://127.0.0.1:5000", "tracking.register_model=smol")
    records = {
        "cache_dir": str(tmp_path),
        "model": SimpleNamespace(sha256="m" * 64),
        "prepared": SimpleNamespace(
            train_sha256="t" * 64, eval_sha256="e" * 64, validated_key="v", train_tokens_sha256="k" * 64
        ),
        "trained": SimpleNamespace(key="trained", result=SimpleNamespace(precision="fp32", device="cpu")),
        "base": SimpleNamespace(key="base", base_file=str(base_file(tmp_path))),
    }
    for parts in (keys.train_parts, keys.evaluate_base_parts, keys.evaluate_parts, keys.export_parts):
        assert parts(records | {"config": plain}) == parts(records | {"config": tracked}), parts.__name__
    # W&B (or TensorBoard) through train.report_to: TRL gets the reporters, and no key changes either.
    wandb = job(tmp_path, "train.report_to=[wandb]")
    assert keys.train_parts(records | {"config": plain}) == keys.train_parts(records | {"config": wandb})


def test_a_server_that_is_down_gives_a_warning_not_an_exception(tmp_path: Path) -> None:
    tracking = TrackingConfig(mlflow_uri=f"http://127.0.0.1:{free_port()}", register_model="smol")
    started = time.monotonic()
    outcome = track(tracking, TrackedRun(name="r1", params={"a": "1"}))
    assert outcome.run_id is None and outcome.warning is not None
    assert "run r1 is not" in outcome.warning and tracking.mlflow_uri in outcome.warning
    assert "refused" in outcome.warning.lower()
    assert time.monotonic() - started < 10  # no minutes of MLflow's retries at the end of a training


def test_a_wrong_uri_gives_a_warning_not_an_exception(httpserver: HTTPServer) -> None:
    """A web server that is not MLflow: the stand-in answers /health, then 500 to MLflow's API (which MLflow
    retries: a few seconds here, not its default minutes)."""
    httpserver.expect_request("/health").respond_with_data("OK")
    started = time.monotonic()
    outcome = track(TrackingConfig(mlflow_uri=httpserver.url_for("/")), TrackedRun(name="r2"))
    assert outcome.run_id is None and "run r2 is not" in (outcome.warning or "")
    assert "500" in (outcome.warning or "")
    assert time.monotonic() - started < 30


def test_tracking_off_does_nothing() -> None:
    assert track(TrackingConfig(), TrackedRun(name="r3")).warning is None


def base_file(folder: Path) -> Path:
    """A stand-in for the evaluate_base stage's result file (the evaluate key reads its content)."""
    path = folder / "base.json"
    path.write_text('{"loss": 1.0}')
    return path
