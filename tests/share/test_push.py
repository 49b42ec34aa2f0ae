"""`smoltune push` against a LOCAL HTTP SERVER THAT STANDS IN FOR THE HUGGING FACE HUB: pytest-httpserver on
127.0.0.1 with HF_ENDPOINT pointed at it; nothing reaches huggingface.co. The stand-in answers the endpoints
huggingface_hub 1.33 calls to publish (read from its hf_api.py / _commit_api.py): POST /api/repos/create,
POST /api/models/OWNER/NAME/branch/BRANCH, POST /api/validate-yaml (the README.md metadata check),
POST /api/models/OWNER/NAME/preupload/BRANCH (answered "regular", so no LFS/Xet upload: every file's bytes arrive
base64 in the commit body) and POST /api/models/OWNER/NAME/commit/BRANCH; it records what was sent.

tests/conftest.py sets HF_HUB_OFFLINE=1 before huggingface_hub is imported, which freezes it into
`huggingface_hub.constants`; the tests that talk to the stand-in switch it off there (and the CLI subprocess runs
without it): their only network is 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from werkzeug import Request, Response

from smoltune.errors import PublishError
from smoltune.share.push import push_run, upload_plan
from tests.share.runs import LOSS_CURVE_BYTES, hub_base, make_adapter, make_run

TOKEN = "hf_" + "S3cr3tT0k3n" * 3
REPO = "someone/tiny-adapter"
ADAPTER_FILES = {"README.md", "adapter_config.json", "adapter_model.safetensors"}
RUN_FILES = {"report.md", "report.html", "loss_curve.png"}


class StandInHub:
    """Answers the Hub's publishing endpoints (see the module docstring) and keeps what arrived."""

    def __init__(self, url: str, status: int = 200) -> None:
        self.url, self.status = url, status
        self.created: list[dict] = []
        self.branches: list[str] = []
        self.validated: list[str] = []
        self.commits: list[tuple[str, list[dict]]] = []
        self.auth: set[str | None] = set()

    def __call__(self, request: Request) -> Response:
        self.auth.add(request.headers.get("Authorization"))
        if self.status != 200:
            return self._json({"error": "Invalid credentials in Authorization header"}, self.status)
        path = request.path
        if path == "/api/repos/create":
            self.created.append(request.get_json())
            return self._json({"url": f"{self.url}/{REPO}"})
        if path == "/api/validate-yaml":
            self.validated.append(request.get_json()["content"])
            return self._json({"errors": [], "warnings": []})
        if match := re.fullmatch(rf"/api/models/{REPO}/branch/(.+)", path):
            self.branches.append(match.group(1))
            return self._json({})
        if re.fullmatch(rf"/api/models/{REPO}/preupload/.+", path):
            files = request.get_json()["files"]
            regular = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return self._json({"files": regular})
        if match := re.fullmatch(rf"/api/models/{REPO}/commit/(.+)", path):
            lines = [json.loads(line) for line in request.get_data().splitlines() if line.strip()]
            self.commits.append((match.group(1), lines))
            return self._json({"commitUrl": f"{self.url}/{REPO}/commit/{'a' * 40}", "commitOid": "a" * 40})
        return self._json({"error": f"the stand-in does not answer {request.method} {path}"}, 404)

    @staticmethod
    def _json(data: dict, status: int = 200) -> Response:
        return Response(json.dumps(data), status=status, content_type="application/json")

    def uploaded(self) -> dict[str, bytes]:
        """Path in the repo -> bytes, from the one commit received."""
        (_, lines) = self.commits[0]
        files = [line["value"] for line in lines if line["key"] == "file"]
        assert not [line for line in lines if line["key"] not in ("header", "file")]  # no LFS pointers, no deletes
        return {f["path"]: base64.b64decode(f["content"]) for f in files}


@pytest.fixture(scope="module")
def adapter_src(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture
def run_dir(tmp_path: Path, adapter_src: Path) -> Path:
    return make_run(tmp_path, adapter_src, hub_base(tmp_path))


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch, httpserver) -> str:
    """huggingface_hub pointed at the stand-in, with a token in HF_TOKEN; returns the stand-in's URL."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    url = httpserver.url_for("/").rstrip("/")
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    return url


def serve(httpserver, hub: StandInHub) -> StandInHub:
    httpserver.expect_request(re.compile(".*")).respond_with_handler(hub)
    return hub


def test_push_uploads_adapter_card_and_report_only(run_dir: Path, online: str, httpserver) -> None:
    hub = serve(httpserver, StandInHub(online))
    url = push_run(run_dir, REPO, private=True, revision="exp-1")
    assert url == f"{online}/{REPO}/commit/{'a' * 40}"
    assert hub.created == [{"name": "tiny-adapter", "organization": "someone", "visibility": "private"}]
    assert hub.branches == ["exp-1"] and [branch for branch, _ in hub.commits] == ["exp-1"]
    uploaded = hub.uploaded()
    assert set(uploaded) == ADAPTER_FILES | RUN_FILES  # no checkpoint-*, optimizer state or hidden cache
    adapter = run_dir.parent.parent / "_cache" / "train"
    (card,) = adapter.glob("*/adapter/README.md")
    assert uploaded["README.md"] == card.read_bytes() and b"library_name: peft" in uploaded["README.md"]
    assert uploaded["adapter_model.safetensors"] == card.with_name("adapter_model.safetensors").read_bytes()
    assert uploaded["loss_curve.png"] == LOSS_CURVE_BYTES
    assert hub.validated == [card.read_text()]  # the Hub's metadata check saw the card
    assert hub.auth == {f"Bearer {TOKEN}"}


def test_push_without_private_or_revision_leaves_both_to_the_hub(run_dir: Path, online: str, httpserver) -> None:
    hub = serve(httpserver, StandInHub(online))
    push_run(run_dir, REPO)
    assert hub.created == [{"name": "tiny-adapter", "organization": "someone"}]  # the namespace's default visibility
    assert hub.branches == [] and [branch for branch, _ in hub.commits] == ["main"]


def test_plan_never_lists_training_state(run_dir: Path) -> None:
    names = {name for name, _ in upload_plan(run_dir)}
    assert names == ADAPTER_FILES | RUN_FILES


@pytest.mark.parametrize("status", [401, 403])
def test_refused_token_is_one_line(run_dir: Path, online: str, httpserver, status: int) -> None:
    serve(httpserver, StandInHub(online, status=status))
    with pytest.raises(PublishError) as raised:
        push_run(run_dir, REPO)
    message = str(raised.value)
    assert "\n" not in message and REPO in message and TOKEN not in message
    assert ("refused the token (401" in message) if status == 401 else ("may not write to" in message)


def test_offline_and_unreachable_are_one_line(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    from tests.conftest import free_port

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PublishError, match="^HF_HUB_OFFLINE is set: publishing needs the Hub"):
        push_run(run_dir, REPO)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(PublishError, match=r"^cannot reach the Hub at http://127\.0\.0\.1:\d+ \(ConnectError\)"):
        push_run(run_dir, REPO)


def test_no_token_says_how_to_give_one(run_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(PublishError, match="no Hugging Face token: set HF_TOKEN"):
        push_run(run_dir, REPO)


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    cli = str(Path(sys.executable).parent / "smoltune")
    return subprocess.run([cli, *args], capture_output=True, text=True, env={**clean, **env}, timeout=120)


def test_cli_push_prints_the_commit_and_exit_code_10_on_401(run_dir: Path, httpserver) -> None:
    url = httpserver.url_for("/").rstrip("/")
    hub = serve(httpserver, StandInHub(url))
    env = {"HF_ENDPOINT": url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1"}
    done = _cli(["push", str(run_dir), "--repo", REPO, "--revision", "exp-2"], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == f"{url}/{REPO}/commit/{'a' * 40}"
    assert set(hub.uploaded()) == ADAPTER_FILES | RUN_FILES and hub.branches == ["exp-2"]

    httpserver.clear()
    serve(httpserver, StandInHub(url, status=401))
    refused = _cli(["push", str(run_dir), "--repo", REPO], env)
    assert refused.returncode == PublishError.exit_code == 10
    assert refused.stderr.startswith("error: the Hub at") and len(refused.stderr.strip().splitlines()) == 1
    assert TOKEN not in refused.stderr + refused.stdout


def test_cli_dry_run_and_bad_run_folder(run_dir: Path, tmp_path: Path) -> None:
    listed = _cli(["push", str(run_dir), "--repo", REPO, "--dry-run"], {})
    assert listed.returncode == 0, listed.stderr
    assert {line.split(" <- ")[0] for line in listed.stdout.splitlines()} == ADAPTER_FILES | RUN_FILES
    missing = _cli(["push", str(tmp_path), "--repo", REPO], {})
    assert missing.returncode == 2 and "no summary.json" in missing.stderr
    no_repo = _cli(["push", str(run_dir)], {})
    assert no_repo.returncode == 2 and "--repo: name the Hub repo as OWNER/NAME" in no_repo.stderr


def test_flow_publishes_only_a_promoted_run(tmp_path: Path, adapter_src: Path, online: str, httpserver) -> None:
    """The flow's push step (tasks.publish without Prefect's runtime): opt-in, promoted runs only, and a failure
    names the finished run and the command that retries it."""
    from smoltune.config import OutputConfig
    from smoltune.share.push import read_summary
    from tasks.publish import publish_promoted

    hub = serve(httpserver, StandInHub(online))
    logged: list[str] = []
    kept = make_run(tmp_path / "kept", adapter_src, hub_base(tmp_path), promoted=False)
    output = OutputConfig(push_to_hub=REPO, push_revision="nightly")
    assert publish_promoted(read_summary(kept), OutputConfig(), logged.append) is None  # not asked to publish
    assert publish_promoted(read_summary(kept), output, logged.append) is None
    assert logged == [f"not published to {REPO}: the run was not promoted"] and hub.commits == []

    summary = read_summary(make_run(tmp_path / "best", adapter_src, hub_base(tmp_path)))
    assert publish_promoted(summary, output, logged.append) == f"{online}/{REPO}/commit/{'a' * 40}"
    assert hub.branches == ["nightly"] and set(hub.uploaded()) == ADAPTER_FILES | RUN_FILES

    httpserver.clear()
    serve(httpserver, StandInHub(online, status=401))
    with pytest.raises(PublishError) as raised:
        publish_promoted(summary, output, logged.append)
    message = str(raised.value)
    assert message.startswith(f"run {summary['run_dir']} finished and was promoted, but publishing it to {REPO}")
    assert message.endswith(f"Retry with `smoltune push {summary['run_dir']} --repo {REPO} --revision nightly`")
    assert "\n" not in message


def test_push_to_hub_must_be_a_repo_id() -> None:
    from smoltune.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="output.push_to_hub: String should match pattern"):
        build_config({"output": {"push_to_hub": "https://huggingface.co/someone/x"}})
    assert build_config({"output": {"push_to_hub": REPO}}).output.push_to_hub == REPO
