"""Which kind of place a `model.source` or `data.source` names: the one decision every stage shares.

    python -c "from smoltune.sources import source_kind; print(source_kind('HuggingFaceTB/SmolLM2-135M-Instruct'))"

Config checks, cache keys, model resolution and data fetching all ask this function, in this order, so a name
can never be a local file to one of them and a hub id to another:

1. `embedded`: the literal word (the built-in model or rows);
2. `url`: http(s)://...;
3. `local`: anything that exists on disk (even if it also has the org/name shape of a hub id);
4. `hub`: the org/name shape, when it does not look like a path (`data/x.jsonl` never goes to the network);
5. `missing`: everything else; `looks_like_path` tells a missing file (reported before anything runs) from a
   name that is simply not a source (reported by the stage, with the list of what it accepts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from smoltune.hub import is_hub_id, looks_like_path

SourceKind = Literal["embedded", "url", "local", "hub", "missing"]


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def source_kind(source: str) -> SourceKind:
    if source == "embedded":
        return "embedded"
    if is_url(source):
        return "url"
    if Path(source).expanduser().exists():
        return "local"
    if is_hub_id(source):
        return "hub"
    return "missing"


def missing_path(source: str) -> bool:
    """A source that names a file or folder (by its shape) that is not there."""
    return source_kind(source) == "missing" and looks_like_path(source)
