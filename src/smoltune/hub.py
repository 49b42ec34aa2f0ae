"""The Hugging Face Hub: what counts as a hub id, and which commit a (repo, revision) is at right now.

    python -c "from smoltune.hub import hub_commit; print(hub_commit('model', 'HuggingFaceTB/SmolLM2-135M-Instruct'))"

A hub id or a branch name says nothing about content: `main` moves. Cache keys use the resolved commit, so a
scheduled retrain on an unpinned dataset sees a new commit as new data, and a pinned commit never re-downloads.
"""

from __future__ import annotations

import re
from typing import Literal

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


# A name ending like a data file is a path, even when it has the org/name shape: `data/x.jsonl` that does not
# exist is a missing file to report, not a hub dataset to look up over the network.
PATH_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".yaml", ".yml", ".txt", ".gguf", ".safetensors")


def looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or text.lower().endswith(PATH_SUFFIXES) or text.count("/") > 1


def is_hub_id(text: str) -> bool:
    return bool(HUB_ID.match(text)) and not looks_like_path(text)


def hub_commit(kind: Literal["model", "dataset"], repo_id: str, revision: str | None = None) -> str | None:
    """The commit sha `revision` (default: main) points at, or None when the hub cannot be asked (offline,
    or the repository is unreachable; resolution itself then reports the problem or uses its cached copy)."""
    if revision and _COMMIT.match(revision):
        return revision  # a pinned commit is its own identity: no network needed
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi()
    info = api.model_info if kind == "model" else api.dataset_info
    try:
        return info(repo_id, revision=revision).sha
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError, ValueError):
        return None
