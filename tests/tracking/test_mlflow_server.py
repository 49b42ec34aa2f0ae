"""A finished run logged to a REAL `mlflow server` (SQLite store, artifacts in tmp_path) started on 127.0.0.1 by
the test, then read back through `mlflow.MlflowClient`: the run with its tags, params, curves, figures,
artifacts and adapter; compare variants nested under their run; the promoted adapter in the model registry.

    .venv/bin/pytest -q tests/tracking/test_mlflow_server.py      # ~40 s: the server takes ~20 s to start
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from smoltune.config import TrackingConfig
from smoltune.tracking.content import parent_run, run_folder_files, trained_run
from smoltune.tracking.mlflow_runs import PARENT_RUN_TAG, track
from tests.conftest import free_port
from tests.tracking.conftest import STEPS, eval_figures, job, promotion, run_folder, train_result

pytestmark = pytest.mark.integration  # a real server: ~20 s to start on two cores
PREFECT_URL = "http://127.0.0.1:4200/runs/flow-run/0b6f"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on a free loopback port; stopped (its whole process group) by PID at the end."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
        "--workers", "1",
    ]  # fmt: skip
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed in the finalizer
    # No telemetry (offline), and no job runner: its worker processes are not needed to log runs.
    env = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_health(url, server, root / "server.log")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the group of the process started above: uvicorn and its job runner
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _wait_for_health(url: str, server: subprocess.Popen, log: Path, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited ({server.returncode}):\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {limit_s} s:\n{log.read_text()[-2000:]}")


def test_a_promoted_run_is_logged_and_registered(mlflow_server: str, adapter_dir: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    folder = run_folder(tmp_path)
    config = job(tmp_path, f"tracking.mlflow_uri={mlflow_server}", "tracking.register_model=smol-test")
    run = trained_run(
        folder.name, config, train_result(adapter_dir), eval_figures(), promotion(True), run_folder_files(folder)
    )
    run.params.update({f"extra.p{i}": str(i) for i in range(120)})  # more than one log_batch request of params
    outcome = track(config.tracking, run, {"prefect.flow_run_url": PREFECT_URL})
    assert outcome.warning is None and outcome.run_id and outcome.model_version == "1"
    assert outcome.run_url and outcome.run_url.startswith(mlflow_server)

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    logged = client.get_run(outcome.run_id)
    assert logged.info.run_name == folder.name and logged.info.status == "FINISHED"
    assert logged.data.tags["prefect.flow_run_url"] == PREFECT_URL
    assert logged.data.tags["smoltune.promoted"] == "true"
    params = logged.data.params
    assert len(params) == len(run.params) > 150
    assert params["train.lora.r"] == "16" and params["data.source"].endswith("token=REDACTED")
    assert all("s3cr3t" not in value for value in params.values())

    history = client.get_metric_history(outcome.run_id, "train/loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, STEPS + 1))
    assert sorted(history, key=lambda m: m.step)[-1].value == pytest.approx(2.5 - 0.2 * STEPS)
    assert len(client.get_metric_history(outcome.run_id, "train/learning_rate")) == STEPS
    metrics = logged.data.metrics
    assert metrics["eval/eval_loss_base"] == 2.0 and metrics["eval/eval_loss_tuned"] == 1.5
    assert metrics["eval/accuracy_tuned"] == 0.6 and metrics["train/tokens_per_second"] == 200.0

    artifacts = {a.path for a in client.list_artifacts(outcome.run_id)}
    assert {"report.md", "report.html", "loss_curve.png", "summary.json", "config.yaml"} <= artifacts

    version = client.get_model_version("smol-test", outcome.model_version)
    assert version.run_id == outcome.run_id
    assert version.tags["eval/accuracy_tuned"] == "0.6" and version.tags["prefect.flow_run_url"] == PREFECT_URL
    assert version.description == "first run for these held-out rows"
    model = client.get_logged_model(version.model_id) if version.model_id else _only_model(client, logged)
    assert model.source_run_id == outcome.run_id and model.name == "adapter"
    files = {a.path for a in client.list_logged_model_artifacts(model.model_id)}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files


def _only_model(client, run):  # noqa: ANN001, ANN202
    (model,) = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id='{run.info.run_id}'")
    return model


def test_variants_nest_under_the_comparison_and_unpromoted_runs_stay_unregistered(
    mlflow_server: str, adapter_dir: Path, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    folder = run_folder(tmp_path, "compare-run")
    config = job(tmp_path, f"tracking.mlflow_uri={mlflow_server}", "tracking.register_model=smol-compare")
    variants = [
        trained_run(name, config, train_result(adapter_dir), eval_figures(loss))
        for name, loss in (("lora-r16", 1.5), ("lora-r256", 1.4))
    ]
    outcome = track(config.tracking, parent_run(folder.name, config, run_folder_files(folder), variants))
    assert outcome.warning is None and outcome.model_version is None

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    parent = client.get_run(outcome.run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{outcome.run_id}'"
    )
    assert sorted(c.info.run_name for c in children) == ["lora-r16", "lora-r256"]
    by_name = {c.info.run_name: c for c in children}
    assert by_name["lora-r256"].data.metrics["eval/eval_loss_tuned"] == 1.4
    assert len(client.get_metric_history(by_name["lora-r16"].info.run_id, "train/loss")) == STEPS
    assert "report.md" in {a.path for a in client.list_artifacts(outcome.run_id)}
    assert client.search_model_versions("name='smol-compare'") == []


def test_a_local_folder_needs_no_server(adapter_dir: Path, tmp_path: Path) -> None:
    """tracking.mlflow_uri as a folder: an SQLite store and artifacts made inside it, readable with `mlflow ui`."""
    from mlflow import MlflowClient

    tracking = TrackingConfig(mlflow_uri=str(tmp_path / "mlruns"), register_model="smol-local")
    config = job(tmp_path)
    run = trained_run("local-run", config, train_result(adapter_dir), eval_figures(), promotion(True))
    outcome = track(tracking, run)
    assert outcome.warning is None and outcome.model_version == "1"
    assert (tmp_path / "mlruns" / "mlflow.db").is_file() and (tmp_path / "mlruns" / "artifacts").is_dir()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    assert len(client.get_metric_history(outcome.run_id, "train/loss")) == STEPS
