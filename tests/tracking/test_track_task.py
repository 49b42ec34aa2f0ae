"""The Prefect layer: inside a flow run, `track_finetune` tags the MLflow run with the flow run's id and UI page,
and a tracking server that is down leaves the flow Completed with a warning in its log.

    .venv/bin/pytest -q tests/tracking/test_track_task.py     # a temporary Prefect server: ~1 min
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow
from prefect.runtime import flow_run

from smoltune.records import Evaluated, Trained
from tasks.track import PREFECT_ID_TAG, PREFECT_URL_TAG, track_finetune
from tests.conftest import free_port
from tests.tracking.conftest import eval_figures, job, promotion, run_folder, train_result

pytestmark = pytest.mark.integration  # a Prefect server and an MLflow store


def records(adapter_dir: Path, tmp_path: Path) -> tuple[Trained, Evaluated]:
    trained = Trained(result=train_result(adapter_dir))
    evaluated = Evaluated(
        figures=eval_figures(), heldout_sha256="e" * 64, generations_file=str(tmp_path / "g.json"),
        answers_file=str(tmp_path / "a.json"),
    )  # fmt: skip
    return trained, evaluated


def test_the_flow_run_is_tagged_and_a_down_server_only_warns(
    prefect_server: None, adapter_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow import MlflowClient

    trained, evaluated = records(adapter_dir, tmp_path)
    folder = run_folder(tmp_path)
    store = tmp_path / "mlruns"

    @flow
    def tracked(uri: str) -> str:
        config = job(tmp_path, f"tracking.mlflow_uri={uri}", "tracking.experiment=task-test")
        track_finetune(config, folder, trained, evaluated, promotion(False))
        return str(flow_run.id)

    flow_run_id = tracked(str(store))
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("task-test").experiment_id])
    assert run.info.run_name == folder.name
    assert run.data.tags[PREFECT_ID_TAG] == flow_run_id
    assert run.data.tags[PREFECT_URL_TAG].endswith(f"/flow-runs/flow-run/{flow_run_id}")
    assert run.data.tags[PREFECT_URL_TAG].startswith("http")

    tracked(f"http://127.0.0.1:{free_port()}")  # completes: the training it describes is done
    assert any("MLflow tracking failed" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
