"""Real components on 127.0.0.1: a Prefect server (SQLite) and a process worker, deployments from
prefect.yaml, `prefect deployment run`, the report artifact read back through the API, and the finished run
opened in the Prefect UI in headless Chromium. Every process started here is stopped here."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow

PREFECT = str(Path(sys.executable).parent / "prefect")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def wait_for(check, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


def healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def prefect_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": api,
        "SMOLTUNE_HOME": str(home / "smoltune"),  # the worker's download cache and training lock
    }
    logs = home / "logs"
    logs.mkdir()
    started: list[subprocess.Popen] = []

    def spawn(*args: str, log: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [PREFECT, *args], env=env, stdout=open(logs / log, "w"), stderr=subprocess.STDOUT, start_new_session=True
        )
        started.append(proc)
        return proc

    try:
        spawn("server", "start", "--host", "127.0.0.1", "--port", str(port), log="server.log")
        wait_for(lambda: healthy(api), 180, "Prefect server")
        subprocess.run([PREFECT, "work-pool", "create", "smoltune", "--type", "process"], env=env, check=True)
        # Exactly what docs/operations.md says: every deployment of prefect.yaml (the Kubernetes one is opt-in).
        deploy = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"], env=env, capture_output=True, text=True)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        deployments = httpx.post(f"{api}/deployments/filter", json={}).json()
        assert {d["name"] for d in deployments} == {"finetune", "compare", "preference", "retrain-weekly"}
        [weekly] = [d for d in deployments if d["name"] == "retrain-weekly"]
        assert weekly["schedules"][0]["schedule"]["cron"] == "0 3 * * 1"
        spawn("worker", "start", "--pool", "smoltune", log="worker.log")
        yield {"env": env, "api": api, "ui": f"http://127.0.0.1:{port}", "logs": logs}
    finally:
        for proc in reversed(started):
            stop(proc)


def tiny_job(tiny_model_dir: Path, runs_dir: Path, **data: object) -> dict:
    return {
        "model": {"source": str(tiny_model_dir)},
        "data": {"num_samples": 12, "eval_samples": 6, **data},
        "train": {"max_steps": 2, "warmup_steps": 1, "max_seq_length": 256},
        "eval": {"max_new_tokens": 3, "answer_max_new_tokens": 3},
        "output": {"runs_dir": str(runs_dir)},
    }


def run_deployment(stack: dict, name: str, config: dict) -> dict:
    """`prefect deployment run NAME --params ... --watch`, then the finished flow run as the API reports it."""
    done = subprocess.run(
        [PREFECT, "deployment", "run", name, "--params", json.dumps({"config": config}), "--watch"]
        + ["--watch-timeout", "600"],
        env=stack["env"],
        capture_output=True,
        text=True,
        timeout=660,
    )
    worker_log = (stack["logs"] / "worker.log").read_text()[-3000:]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + worker_log
    # The run this command created (the cron schedule has created future runs of retrain-weekly meanwhile).
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", done.stdout).group(1)
    flow_run = httpx.get(f"{stack['api']}/flow_runs/{flow_run_id}").json()
    assert flow_run["state"]["type"] == "COMPLETED"
    return flow_run


def artifacts_of(api: str, flow_run_id: str) -> dict[str, dict]:
    artifacts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    return {a["key"]: a for a in artifacts.json()}


def task_states(api: str, flow_run_id: str) -> dict[str, str]:
    runs = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}}).json()
    return {r["name"].rsplit("-", 1)[0]: r["state"]["name"] for r in runs}


def test_deployment_run_completes_and_publishes_the_report(
    prefect_stack: dict, tiny_model_dir: Path, tmp_path: Path
) -> None:
    flow_run = run_deployment(prefect_stack, "finetune/finetune", tiny_job(tiny_model_dir, tmp_path / "runs"))
    by_key = artifacts_of(prefect_stack["api"], flow_run["id"])
    assert {"smoltune-report", "smoltune-metrics", "smoltune-loss-curve", "smoltune-promotion"} <= set(by_key)
    assert "## Held-out evaluation" in by_key["smoltune-report"]["data"]
    prefect_stack["flow_run_id"] = flow_run["id"]


def test_scheduled_retrain_sees_new_data_at_a_url(prefect_stack: dict, tiny_model_dir: Path, tmp_path: Path) -> None:
    from smoltune.data.builtin import generate_rows
    from tests.http_files import FileServer

    served = tmp_path / "served"
    served.mkdir()
    rows = served / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in generate_rows(60, seed=1)))
    api, cached_stages = prefect_stack["api"], {"fetch_dataset", "validate_dataset", "prepare_dataset", "train"}
    with FileServer(served) as server:
        job = tiny_job(tiny_model_dir, tmp_path / "runs", source=server.url("rows.jsonl"))
        first = run_deployment(prefect_stack, "finetune/retrain-weekly", job)
        assert task_states(api, first["id"])["train"] == "Completed"

        # A week without new data: every stage Cached, the body not downloaded again.
        unchanged = task_states(api, run_deployment(prefect_stack, "finetune/retrain-weekly", job)["id"])
        assert {unchanged[s] for s in [*cached_stages, "resolve_model", "evaluate"]} == {"Cached"}, unchanged
        assert server.bodies_sent == 1

        # New rows at the same URL: a new adapter, and a promotion decision published as an artifact.
        server.replace(rows, "".join(json.dumps(r) + "\n" for r in generate_rows(60, seed=2)))
        changed_run = run_deployment(prefect_stack, "finetune/retrain-weekly", job)
    changed = task_states(api, changed_run["id"])
    assert {changed[s] for s in [*cached_stages, "evaluate"]} == {"Completed"}, changed
    promotion = artifacts_of(api, changed_run["id"])["smoltune-promotion"]
    assert "## Promotion" in promotion["data"] and "held-out" in promotion["data"]


def test_a_failed_run_states_the_same_message_as_the_cli(
    prefect_stack: dict, tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows = [{"instruction": f"Question {i}?", "input": "", "output": "yes"} for i in range(20)]
    rows[2].pop("output")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tiny_job(tiny_model_dir, tmp_path / "runs", source=str(data))
    done = subprocess.run(
        [PREFECT, "deployment", "run", "finetune/finetune", "--params", json.dumps({"config": config}), "--watch"],
        env=prefect_stack["env"],
        capture_output=True,
        text=True,
        timeout=660,
    )
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", done.stdout).group(1)
    state = httpx.get(f"{prefect_stack['api']}/flow_runs/{flow_run_id}").json()["state"]
    assert state["type"] == "FAILED"
    assert "data validation failed" in state["message"] and "'output' not null" in state["message"]


def test_the_ui_shows_the_completed_run_and_its_report(prefect_stack: dict, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    flow_run_id = prefect_stack.get("flow_run_id")
    assert flow_run_id, "runs after test_deployment_run_completes_and_publishes_the_report"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{prefect_stack['ui']}/runs/flow-run/{flow_run_id}", wait_until="networkidle")
            page.get_by_text("Completed").first.wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "flow-run.png"), full_page=True)
            page.get_by_text("Artifacts", exact=True).first.click()
            page.get_by_text("smoltune-report").first.wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "artifacts.png"), full_page=True)
        finally:
            page.screenshot(path="/tmp/smoltune-ui-last.png", full_page=True)
            Path("/tmp/smoltune-ui-last.txt").write_text(page.inner_text("body"))
            browser.close()
    assert (tmp_path / "flow-run.png").stat().st_size > 10_000 and (tmp_path / "artifacts.png").is_file()


def test_a_killed_run_gives_its_training_slot_back(prefect_stack: dict) -> None:
    """The slot is a global concurrency limit on the server (listed where the UI's Concurrency page reads it);
    the server takes back the slot of a run SIGKILLed while training once its lease runs out. (The next run is
    a process of its own, as runs are: Prefect's slot service is one per process, bound to the first server.)"""
    from smoltune.pipeline.slots import LEASE_S, limit_name
    from tests.integration.test_scale_out import killed_holder

    killed_holder(prefect_stack["env"])
    limits = httpx.post(f"{prefect_stack['api']}/v2/concurrency_limits/filter", json={}).json()
    [limit] = [entry for entry in limits if entry["name"] == limit_name()]
    assert limit["limit"] == 1 and limit["active_slots"] == 1  # still held by the killed run
    take = (
        "from smoltune.pipeline.slots import training_slot\nwith training_slot(limit_s=360, poll_s=30): print('HELD')"
    )
    started = time.monotonic()
    taken = subprocess.run(
        [sys.executable, "-c", take], env=prefect_stack["env"], capture_output=True, text=True, timeout=400
    )
    waited = time.monotonic() - started
    assert taken.returncode == 0 and "HELD" in taken.stdout, taken.stderr[-2000:]
    assert LEASE_S / 2 < waited < 6 * LEASE_S
