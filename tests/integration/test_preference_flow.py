"""The preference flow under a real (temporary) Prefect API on the tiny model: SFT stages reused from the cache,
every DPO stage cached, a new beta reruns only DPO training and what follows, a bad pair stops the flow before
any DPO step, and the run's adapter is the DPO one for `smoltune serve` and `smoltune chat`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_checks.suite import DataValidationError
from smoltune.config import load_config
from tests.pipeline.test_caching import task_states
from tests.tiny_model import tiny_overrides

PREFERENCE = {
    "fetch_preferences",
    "validate_preferences",
    "prepare_preferences",
    "reference_logps",
    "train_preference",
    "evaluate_preference",
}
SFT = {"resolve_model", "fetch_dataset", "validate_dataset", "prepare_dataset", "train", "evaluate_base", "evaluate"}
PAIRS = "preference={num_pairs: 8, eval_pairs: 4, min_pairs: 4, max_steps: 2, batch_size: 2, grad_accum: 2}"


def config(tiny_model_dir: Path, runs: Path, *extra: str):  # noqa: ANN201
    return load_config("configs/smoke.yaml", [*tiny_overrides(tiny_model_dir, runs), PAIRS, *extra])


def run(job) -> tuple[dict[str, str], Path]:  # noqa: ANN001
    from flows.preference import preference

    state = preference(config=job, return_state=True)
    assert state.is_completed()
    return task_states(state.state_details.flow_run_id, frozenset(SFT | PREFERENCE)), Path(state.result())


def reran(states: dict[str, str], stages: set[str]) -> set[str]:
    return {s for s in stages if states[s] != "Cached"}


@pytest.mark.slow  # over 30 s: `make test-slow` (CI runs it after `make test`)
def test_preference_flow_caches_reports_and_serves_the_dpo_adapter(
    prefect_server: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from flows.finetune import finetune
    from smoltune.serve.engine import adapter_source

    job = config(tiny_model_dir, tmp_path / "runs")
    finetune(config=job)  # an SFT run already done: the preference flow reuses every SFT stage
    first, run_dir = run(job)
    assert reran(first, SFT) == set() and reran(first, PREFERENCE) == PREFERENCE

    summary = json.loads((run_dir / "summary.json").read_text())
    pref = summary["preference"]
    assert pref["pairs"]["shape"] == "alpaca" and pref["train_pairs"] == 8 and pref["eval_pairs"] == 4
    assert 0.0 <= pref["eval"]["reward_accuracy"] <= 1.0 and set(pref["eval"]["accuracy"]) == {"base", "sft", "dpo"}
    kinds = pref["eval"]["reward_accuracy_by_kind"]  # built-in pairs: own wrong answers and stand-ins, apart
    assert set(kinds) <= {"own_wrong", "stand_in"} and sum(k["pairs"] for k in kinds.values()) == 4, kinds
    assert pref["train"]["losses"][0] == pytest.approx(0.693147, abs=1e-4)  # the reference is the SFT model
    assert summary["artifacts"]["adapter_dir"] == pref["train"]["output_dir"] != summary["artifacts"]["sft_adapter_dir"]
    assert adapter_source("dpo", run_dir).path == pref["train"]["output_dir"]
    report = (run_dir / "report.md").read_text()
    assert "## Preference tuning (DPO)" in report and "| prompt | base | SFT | DPO |" in report
    assert [d["metric"] for d in pref["promotion"]] == ["accuracy_tuned"] * 2

    unchanged, _ = run(job)
    assert reran(unchanged, SFT | PREFERENCE) == set()

    beta, _ = run(config(tiny_model_dir, tmp_path / "runs", "preference.beta=0.3"))
    assert reran(beta, SFT | PREFERENCE) == {"train_preference", "evaluate_preference"}


def test_a_bad_pair_stops_the_flow_before_any_dpo_step(
    prefect_server: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from flows.preference import preference

    pairs = [{"prompt": f"Name a colour number {i}.", "chosen": "Blue.", "rejected": f"No {i}."} for i in range(12)]
    pairs[5]["rejected"] = "Blue."
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    job = config(tiny_model_dir, tmp_path / "runs", f"preference.source={source}")
    with pytest.raises(DataValidationError) as err:
        preference(config=job)
    assert "chosen differs from rejected" in str(err.value) and "rows 5" in str(err.value)
    assert not (tmp_path / "runs" / "_cache" / "train_preference").exists()
