"""The comparison: compare YAML validation, the compare flow on the tiny model with two variants, and with a plain
LoRA variant beside a DPO variant on top of the same SFT settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smoltune.config import ConfigError, load_compare_config, variant_config
from tests.tiny_model import tiny_overrides

# DPO kept short as in tests/integration/test_preference_flow.py: a few pairs, two steps.
PAIRS = "{num_pairs: 8, eval_pairs: 4, min_pairs: 4, max_steps: 2, batch_size: 2, grad_accum: 2}"


def test_shipped_compare_config_has_the_three_seed_variants() -> None:
    compare = load_compare_config("configs/compare.yaml")
    jobs = {v.name: variant_config(compare, v) for v in compare.variants}
    assert list(jobs) == ["lora-r16", "lora-r256", "full"]
    assert (jobs["lora-r16"].train.lora.r, jobs["lora-r256"].train.lora.r) == (16, 256)
    assert jobs["full"].train.mode == "full"
    assert all(job.train.max_steps == 60 and job.data.num_samples == 100 for job in jobs.values())


def test_bad_variants_are_refused_before_anything_runs(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("variants:\n  - {name: a, set: {train.lora.r: 0}}\n")
    with pytest.raises(ConfigError, match="variant a"):
        load_compare_config(path)
    path.write_text("variants:\n  - {name: a}\n  - {name: a}\n")
    with pytest.raises(ConfigError, match="unique"):
        load_compare_config(path)
    path.write_text("train: {max_steps: 3}\n")
    with pytest.raises(ConfigError, match="variants"):
        load_compare_config(path)


@pytest.mark.slow  # over 30 s: `make test-slow` (CI runs it after `make test`)
def test_compare_flow_on_the_tiny_model(prefect_server: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    from flows.compare import compare

    path = tmp_path / "compare.yaml"
    path.write_text(
        "variants:\n"
        "  - {name: lora-r4, set: {train.lora.r: 4, train.lora.alpha: 4}}\n"
        "  - {name: full, set: {train.mode: full}}\n"
    )
    config = load_compare_config(path, tiny_overrides(tiny_model_dir, tmp_path / "runs"))
    run_dir = Path(compare(config=config))
    report = (run_dir / "compare.md").read_text()
    assert "| lora-r4 |" in report and "| full |" in report
    assert "`lora-r4` against `full`" in report and "claims hold" in report
    data = json.loads((run_dir / "compare.json").read_text())
    assert [r["variant"] for r in data["rows"]] == ["lora-r4", "full"]
    assert data["rows"][0]["trainable_params"] < data["rows"][1]["trainable_params"]
    assert len(data["claims"]) == 5
    # Shared data: both variants were evaluated on the same held-out rows; each has its own outputs.
    assert (run_dir / "lora-r4" / "train" / "adapter").is_dir() and (run_dir / "full" / "train" / "model").is_dir()
    answers = [json.loads((run_dir / v / "evaluation" / "answers.json").read_text()) for v in ("lora-r4", "full")]
    assert [a["reference"] for a in answers[0]] == [a["reference"] for a in answers[1]]
    # One measurement of the base for both variants (its key leaves out the training): the second found it Cached.
    bases = [p for p in (Path(config.pipeline.output.cache_root) / "evaluate_base").iterdir() if p.is_dir()]
    assert len(bases) == 1 and [a["base"] for a in answers[0]] == [a["base"] for a in answers[1]]
    assert (run_dir / "compare.html").read_text().count("data:image/png;base64,") == 1


def task_run_states(flow_run_id) -> dict[str, list[str]]:  # noqa: ANN001
    """Task name -> the final state of each of its runs in the flow run, in the order they were created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    states: dict[str, list[str]] = {}
    for run in sorted(runs, key=lambda r: r.created):
        states.setdefault(run.name.rsplit("-", 1)[0], []).append(run.state.name)
    return states


@pytest.mark.slow
@pytest.mark.slow  # over 30 s: `make test-slow` (CI runs it after `make test`)
def test_compare_with_a_dpo_variant_on_the_tiny_model(
    prefect_server: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from flows.compare import compare
    from flows.preference import PREFERENCE_STAGES
    from smoltune.pipeline.cache import load_record
    from smoltune.records import PreferenceEvaluated
    from smoltune.report.tables import as_percent

    path = tmp_path / "compare.yaml"
    sft = "train.lora.r: 4, train.lora.alpha: 4"
    path.write_text(
        "variants:\n"
        f"  - {{name: lora-r4, set: {{{sft}}}}}\n"
        f"  - {{name: lora-r4-dpo, set: {{{sft}, preference: {PAIRS}}}}}\n"
    )
    config = load_compare_config(path, tiny_overrides(tiny_model_dir, tmp_path / "runs"))
    state = compare(config=config, return_state=True)
    assert state.is_completed()
    run_dir, states = Path(state.result()), task_run_states(state.state_details.flow_run_id)

    # The DPO variant's SFT settings are lora-r4's: its training and evaluation were cache hits of lora-r4's, and
    # the preference stages ran for it alone.
    assert states["train"] == states["evaluate"] == ["Completed", "Cached"]
    assert (run_dir / "lora-r4" / "train").resolve() == (run_dir / "lora-r4-dpo" / "train").resolve()
    assert {stage: states.get(stage) for stage in PREFERENCE_STAGES} == dict.fromkeys(PREFERENCE_STAGES, ["Completed"])
    assert not (run_dir / "lora-r4" / "preference_train").exists()

    # The report's DPO figures are evaluate_preference's, labelled as the DPO result on top of the variant's SFT.
    record = load_record((run_dir / "lora-r4-dpo" / "preference_evaluation").resolve(), PreferenceEvaluated)
    assert record is not None
    figures = record.figures
    rows = json.loads((run_dir / "compare.json").read_text())["rows"]
    assert [(r["variant"], r["stage"]) for r in rows] == [
        ("lora-r4", "sft"),
        ("lora-r4-dpo", "sft"),
        ("lora-r4-dpo", "dpo"),
    ]
    dpo = rows[2]
    assert (dpo["eval_loss"], dpo["accuracy"]) == (figures.eval_loss["dpo"], figures.accuracy["dpo"])
    assert (dpo["eval_loss_sft"], dpo["accuracy_sft"]) == (figures.eval_loss["sft"], figures.accuracy["sft"])
    assert (dpo["reward_accuracy"], dpo["reward_margin"]) == (figures.reward_accuracy, figures.reward_margin)
    assert (dpo["eval_pairs"], dpo["beta"]) == (4, 0.1)
    report = (run_dir / "compare.md").read_text()
    assert "| lora-r4 |" in report and "| lora-r4-dpo (SFT) |" in report
    loss, accuracy = figures.eval_loss, figures.accuracy
    # The measured table: the DPO model's eval loss and held-out accuracy beside the SFT variants'.
    assert f"(DPO loss) | {loss['dpo']:.4f} | {as_percent(accuracy['dpo'])} |" in report
    # The DPO section: held-out pairs, then SFT -> DPO on the held-out rows.
    assert "## Preference tuning (DPO) on top of SFT" in report
    assert (
        f"| lora-r4-dpo + DPO on its SFT | 0.1 | 4 | {as_percent(figures.reward_accuracy)} | "
        f"{figures.reward_margin:.4f} | {as_percent(accuracy['sft'])} → {as_percent(accuracy['dpo'])} | "
        f"{loss['sft']:.4f} → {loss['dpo']:.4f} |"
    ) in report
