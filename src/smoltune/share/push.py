"""Publish a finished run to the Hugging Face Hub: its adapter (a full fine-tune's model folder) with the model card,
plus the run's report and loss curve, in one commit.

    smoltune push runs/<run> --repo OWNER/NAME [--private] [--revision BRANCH] [--dry-run]

The files are listed here, not globbed on the Hub side, so what is published is exactly `upload_plan`: never a
checkpoint, optimizer state, cache or hidden file. The token comes from the caller (a Prefect Secret block), else
HF_TOKEN or a saved `hf auth login`; it is sent only in the Authorization header and every message is redacted.
Every failure ends in one PublishError line that says what to change; the run folder itself is left complete.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from smoltune.errors import ConfigError, PublishError
from smoltune.hub import is_hub_id
from smoltune.report.markdown import LOSS_CURVE
from smoltune.share.model_card import CARD_FILE, write_model_cards

RUN_FILES = ("report.md", "report.html", LOSS_CURVE)
# Training state and caches a trained folder may hold, never published (matched against every path component).
NEVER_PUBLISHED = (
    "checkpoint-*", "checkpoints", "optimizer.*", "scheduler.*", "rng_state*", "trainer_state.json",
    "training_args.bin", ".*", "*.tmp", "*.lock", "__pycache__", "*.pyc",
)  # fmt: skip
DEFAULT_ENDPOINT = "https://huggingface.co"


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    summary_file = Path(run_dir) / "summary.json"
    if not summary_file.is_file():
        raise ConfigError([f"{run_dir}: no summary.json; pass a run folder a finished `smoltune run` printed"], "RUN")
    return json.loads(summary_file.read_text())


@dataclass(frozen=True)
class PushTarget:
    repo: str
    private: bool
    revision: str | None
    token_secret: str | None  # a Prefect Secret block's name, loaded by the caller (the core never imports Prefect)


def push_target(run_dir: str | Path, repo: str | None, private: bool, revision: str | None) -> PushTarget:
    """Where to publish: the arguments given, else the run's own `output.push_*` settings (its config.yaml)."""
    config_file = Path(run_dir) / "config.yaml"
    output = (yaml.safe_load(config_file.read_text()) or {}).get("output", {}) if config_file.is_file() else {}
    repo = repo or output.get("push_to_hub")
    if not repo:
        raise ConfigError(["--repo: name the Hub repo as OWNER/NAME (the run's output.push_to_hub is not set)"], "push")
    if not is_hub_id(repo):
        raise ConfigError([f"--repo {repo!r}: a Hub repo is OWNER/NAME (letters, digits, . _ -)"], "push")
    return PushTarget(
        repo=repo,
        private=private or bool(output.get("push_private")),
        revision=revision or output.get("push_revision"),
        token_secret=output.get("push_token_secret"),
    )


def published_dir(summary: dict[str, Any]) -> Path:
    """The run's trained folder: its adapter (the DPO one in a preference run), or a full fine-tune's model."""
    artifacts = summary["artifacts"]
    folder = Path(artifacts.get("adapter_dir") or artifacts["model_dir"])
    if not folder.is_dir():
        raise PublishError(
            f"the run's trained folder {folder} no longer exists (its cache folder was removed); rerun the job "
            "with the same config to rebuild it, then push again"
        )
    return folder


def _published(relative: Path) -> bool:
    return not any(fnmatch.fnmatch(part, pattern) for part in relative.parts for pattern in NEVER_PUBLISHED)


def upload_plan(run_dir: str | Path) -> list[tuple[str, Path]]:
    """(path in the repo, local file) for everything `push_run` uploads, after (re)writing the model cards from
    the run's summary (deterministic, so a card already there is rewritten unchanged)."""
    summary = read_summary(run_dir)
    folder = published_dir(summary)
    write_model_cards(summary)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and _published(p.relative_to(folder)))
    plan = [(p.relative_to(folder).as_posix(), p) for p in files]
    plan += [(name, Path(run_dir) / name) for name in RUN_FILES if (Path(run_dir) / name).is_file()]
    if CARD_FILE not in dict(plan):
        raise PublishError(f"{folder}: no model card was written; the run's summary.json names no trained folder")
    return plan


@contextmanager
def hub_errors(repo: str, endpoint: str) -> Iterator[None]:
    """Each way the Hub can refuse, as one PublishError line saying what to change."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        yield
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        if status == 401:
            raise PublishError(
                f"the Hub at {endpoint} refused the token (401 Unauthorized) for {repo}: set HF_TOKEN (or "
                "output.push_token_secret) to a valid token with write access"
            ) from None
        if status in (403, 404):
            raise PublishError(
                f"the token may not write to {repo} at {endpoint} (HTTP {status}): use a token with write access "
                "to that namespace, or push to a repo you own"
            ) from None
        raise PublishError(f"the Hub at {endpoint} answered HTTP {status} for {repo}: {first}") from None
    except OfflineModeIsEnabled:
        raise PublishError("HF_HUB_OFFLINE is set: publishing needs the Hub; unset it and push again") from None
    except (httpx.HTTPError, OSError) as err:
        raise PublishError(
            f"cannot reach the Hub at {endpoint} ({type(err).__name__}); check the network (or HF_ENDPOINT) and "
            "push again"
        ) from None
    except ValueError as err:
        if "README.md" not in str(err):
            raise  # not the Hub's metadata check: a bug, which keeps its traceback
        # The Hub checks README.md's metadata before any file is sent.
        raise PublishError(f"the Hub rejected the model card's metadata for {repo}: {err}") from None


def push_run(
    run_dir: str | Path,
    repo: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
) -> str:
    """Create `repo` if needed (private when asked; an existing repo keeps its visibility), create branch
    `revision` from main if needed, and commit `upload_plan(run_dir)` to it. Returns the commit's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    plan = upload_plan(run_dir)
    token = token or get_token()
    if not token:
        raise PublishError(
            "no Hugging Face token: set HF_TOKEN to a token with write access (huggingface.co/settings/tokens), "
            "run `hf auth login`, or name a Prefect Secret block in output.push_token_secret"
        )
    # Read at call time, not at huggingface_hub's import, so that a process (or test) that sets HF_ENDPOINT late
    # still reaches the endpoint it names.
    endpoint = os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(repo, endpoint):
        api.create_repo(repo, private=True if private else None, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo, branch=revision, exist_ok=True)
        info = api.create_commit(
            repo,
            operations=[CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in plan],
            commit_message=f"smoltune run {Path(run_dir).resolve().name}",
            revision=revision,
        )
    return info.commit_url
