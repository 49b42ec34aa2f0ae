"""The finetune flow under a real (temporary) Prefect API, on the tiny model: artifact published,
bad data stopped before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_checks.suite import DataValidationError
from smoltune.config import load_config
from tests.tiny_model import tiny_overrides


def tiny_config(tiny_model_dir: Path, runs_dir: Path, *extra: str):  # noqa: ANN201
    return load_config("configs/smoke.yaml", [*tiny_overrides(tiny_model_dir, runs_dir), *extra])


def read_report_artifact(flow_run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from tasks.report import REPORT_ARTIFACT_KEY

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    [artifact] = [a for a in artifacts if a.key == REPORT_ARTIFACT_KEY]
    assert artifact.type == "markdown"
    return artifact.data


def test_flow_writes_run_folder_and_publishes_the_report(
    prefect_server: None, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.finetune import finetune
    from smoltune.train import prestart

    taken: list[object] = []  # what each training got from smoltune.train.prestart.take
    take = prestart.take
    monkeypatch.setattr(prestart, "take", lambda *args: taken.append(take(*args)) or taken[-1])
    state = finetune(config=tiny_config(tiny_model_dir, tmp_path), return_state=True)
    assert state.is_completed()
    # The training ran in the process the flow started before its data stages (its imports done meanwhile).
    assert len(taken) == 1 and taken[0] is not None
    run_dir = Path(state.result())
    assert run_dir.parent == tmp_path
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["model"]["kind"] == "local" and summary["train"]["steps"] == 2
    stages = ["resolve_model", "fetch_dataset", "validate_dataset", "prepare_dataset", "train", "evaluate_base"]
    stages += ["evaluate", "promote"]
    assert list(summary["stage_seconds"]) == stages
    assert summary["promotion"]["promoted"] is True and summary["promotion"]["current_value"] is None
    assert (tmp_path / "registry.json").is_file()
    report = (run_dir / "report.md").read_text()
    artifact = read_report_artifact(state.state_details.flow_run_id)
    # The artifact is the report with the loss curve inlined (the UI cannot read the run folder).
    head, _, tail = report.partition("![Loss curve](loss_curve.png)")
    assert artifact.startswith(head + "![Loss curve](data:image/png;base64,")
    assert artifact.endswith(tail) and (run_dir / "loss_curve.png").is_file() and (run_dir / "report.html").is_file()
    assert (run_dir / "config.yaml").is_file() and (run_dir / "generations.json").is_file()
    assert (run_dir / "validation" / "data_docs" / "index.html").is_file()
    assert (run_dir / "data" / "train.jsonl").is_file() and (run_dir / "evaluation" / "answers.json").is_file()
    assert (run_dir / "train" / "adapter" / "adapter_model.safetensors").is_file()
    assert Path(summary["artifacts"]["adapter_dir"]).resolve() == (run_dir / "train" / "adapter").resolve()

    # The same config again: training is found finished in its content-addressed folder, not redone.
    again = Path(finetune(config=tiny_config(tiny_model_dir, tmp_path)))
    summary_again = json.loads((again / "summary.json").read_text())
    assert summary_again["artifacts"]["adapter_dir"] == summary["artifacts"]["adapter_dir"]
    assert summary_again["train"]["train_seconds"] == summary["train"]["train_seconds"]
    # Same adapter, same held-out figure: not better than itself, so not promoted again.
    assert summary_again["promotion"]["promoted"] is False
    assert summary_again["promotion"]["current_run"] == run_dir.name

    # `smoltune chat` answers from the run's adapter, once, with --prompt.
    from typer.testing import CliRunner

    from smoltune.cli import app

    monkeypatch.chdir(tmp_path)  # from any directory: the run's config.yaml holds absolute paths
    chat = CliRunner().invoke(app, ["chat", str(run_dir), "--prompt", "Say hi.", "--max-new-tokens", "5"])
    assert chat.exit_code == 0, chat.output
    missing = CliRunner().invoke(app, ["chat", str(tmp_path)])
    assert missing.exit_code == 2 and "no summary.json" in missing.output


def test_bad_data_stops_the_flow_before_training(prefect_server: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    from flows.finetune import finetune

    rows = [{"instruction": f"Question {i}", "input": "", "output": "answer"} for i in range(20)]
    rows[4]["output"] = "  "
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tiny_config(tiny_model_dir, tmp_path / "runs", f"data.source={data}")
    with pytest.raises(DataValidationError) as err:
        finetune(config=config)
    assert "'output' not empty after strip" in str(err.value) and "rows 4" in str(err.value)
    kept = Path(str(err.value).rsplit("All results and the Data Docs: ", 1)[1])
    report = json.loads(kept.read_text())
    assert report["success"] is False and (kept.parent / "data_docs" / "index.html").is_file()
    assert Path(report["data_docs"]) == kept.parent / "data_docs" / "index.html"  # the kept copy, not a temp path
    [run_dir] = [p for p in (tmp_path / "runs").iterdir() if p.name != "_cache"]
    assert not (tmp_path / "runs" / "_cache" / "train").exists()  # nothing was trained
    assert not (run_dir / "summary.json").exists()
