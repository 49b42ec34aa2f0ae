"""Per-stage caching: unchanged reruns are Cached, a change reruns exactly the stages it affects, and a
deleted stage folder is recomputed instead of failing."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from smoltune.builtin_data import generate_rows
from smoltune.caching import COMPLETE, StageCache, complete_token, folder_for, run_stage
from smoltune.config import load_config
from tests.tiny_model import tiny_overrides

STAGES = ["resolve_model", "fetch_dataset", "validate_dataset", "prepare_dataset", "train", "evaluate"]


def parts(inputs: dict) -> tuple[str, dict]:
    return inputs["cache_dir"], {"x": inputs["x"]}


def test_run_stage_writes_once_and_marks_complete(tmp_path: Path) -> None:
    calls: list[Path] = []

    def compute(out: Path) -> dict:
        calls.append(out)
        (out / "data.txt").write_text("hi")
        return {"file": str(out / "data.txt")}

    folder = folder_for("s", parts, cache_dir=str(tmp_path), x=1)
    first = run_stage(folder, compute)
    assert first["file"] == str(folder / "data.txt") and Path(first["file"]).read_text() == "hi"
    assert run_stage(folder, compute) == first and len(calls) == 1
    assert run_stage(folder, compute, refresh=True) == first and len(calls) == 2
    assert folder_for("s", parts, cache_dir=str(tmp_path), x=2) != folder


def test_a_failed_stage_leaves_no_complete_folder(tmp_path: Path) -> None:
    folder = folder_for("s", parts, cache_dir=str(tmp_path), x=1)

    def broken(out: Path) -> dict:
        (out / "half.txt").write_text("...")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_stage(folder, broken)
    assert not folder.exists() and complete_token(folder) is None


def test_cache_key_is_stable_while_the_folder_lives(tmp_path: Path) -> None:
    policy = StageCache(stage="s", parts=parts)
    inputs = {"cache_dir": str(tmp_path), "x": 1}
    folder = folder_for("s", parts, **inputs)
    before = policy.compute_key(None, inputs, {})  # folder missing: a reserved token
    run_stage(folder, lambda out: {"ok": True})
    assert policy.compute_key(None, inputs, {}) == before  # the run that filled it used that token
    assert policy.compute_key(None, inputs, {}) == before
    assert policy.compute_key(None, {**inputs, "refresh": True}, {}) != before
    shutil.rmtree(folder)
    assert policy.compute_key(None, inputs, {}) != before  # vanished output: a key Prefect has never seen


def test_missing_required_path_invalidates(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    folder = folder_for("s", parts, cache_dir=str(tmp_path), x=1)
    run_stage(folder, lambda out: {"requires": [str(model)]})
    assert complete_token(folder) is not None
    model.rmdir()
    assert complete_token(folder) is None and (folder / COMPLETE).is_file()


def task_states(flow_run_id) -> dict[str, str]:  # noqa: ANN001
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs}


def run(config, refresh=None) -> tuple[dict[str, str], Path, float]:  # noqa: ANN001
    from flows.finetune import finetune

    started = time.perf_counter()
    state = finetune(config=config, refresh=refresh, return_state=True)
    assert state.is_completed()
    return task_states(state.state_details.flow_run_id), Path(state.result()), time.perf_counter() - started


def rerun_stages(states: dict[str, str]) -> set[str]:
    return {stage for stage in STAGES if states[stage] != "Cached"}


def test_each_change_reruns_exactly_what_it_affects(prefect_server: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in generate_rows(60, seed=1)))
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("prompts:\n  - Say hi.\n")
    base = [
        *tiny_overrides(tiny_model_dir, tmp_path / "runs"),
        f"data.source={data}",
        f"eval.prompts_file={prompts}",
    ]
    config = load_config("configs/smoke.yaml", base)
    first, _, _ = run(config)
    assert rerun_stages(first) == set(STAGES)

    unchanged, run_dir, seconds = run(config)
    assert rerun_stages(unchanged) == set() and seconds < 60
    assert unchanged["report"] == "Completed"  # the run's own folder and artifacts are always written
    assert (run_dir / "train" / "adapter").is_dir() and (run_dir / "report.md").is_file()

    prompts.write_text("prompts:\n  - Say hello.\n")  # same path, new content
    assert rerun_stages(run(config)[0]) == {"evaluate"}

    assert rerun_stages(run(load_config("configs/smoke.yaml", [*base, "train.learning_rate=1e-3"]))[0]) == {
        "train",
        "evaluate",
    }

    data.write_text("".join(json.dumps(r) + "\n" for r in generate_rows(60, seed=2)))
    states, latest, _ = run(config)
    assert rerun_stages(states) == {"fetch_dataset", "validate_dataset", "prepare_dataset", "train", "evaluate"}

    # A cached stage folder that vanished is recomputed, not trusted; stages after it stay cached because
    # the recomputed output has the same key.
    shutil.rmtree((latest / "train").resolve())
    states, run_dir, _ = run(config)
    assert rerun_stages(states) == {"train"}
    assert (run_dir / "train" / "adapter" / "adapter_model.safetensors").is_file()


def test_refresh_reruns_the_named_stage(prefect_server: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    config = load_config("configs/smoke.yaml", tiny_overrides(tiny_model_dir, tmp_path / "runs"))
    run(config)
    assert rerun_stages(run(config, refresh=["prepare_dataset"])[0]) == {"prepare_dataset"}
    assert rerun_stages(run(config)[0]) == set()
