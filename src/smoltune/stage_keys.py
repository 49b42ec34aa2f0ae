"""What each stage's cache key covers: (cache dir, key parts) from the task's inputs.

Config objects arrive as pydantic models; inputs that are files are represented by their content hash,
which earlier stages put into their results (`sha256`, `train_sha256`, ...). The code version is added by
`smoltune.caching.stage_key`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smoltune.files import sha256_file


def source_stat(source: str) -> Any:
    """A cheap fingerprint of a local model or data source: name, size and mtime of its files. Hub ids and
    URLs are keyed by their name (and revision / sha256 pin) alone."""
    if source == "embedded":
        from smoltune.model import find_embedded_gguf

        path = find_embedded_gguf()
    else:
        path = Path(source).expanduser()
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def resolve_model_parts(inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    model = inputs["model"]
    return inputs["cache_dir"], {"model": model.model_dump(mode="json"), "stat": source_stat(model.source)}


def fetch_parts(inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    data = inputs["data"]
    path = Path(data.source).expanduser()
    content = sha256_file(path) if path.is_file() else None  # same path, new content: a new key
    fields = data.model_dump(mode="json", exclude={"num_samples", "eval_samples", "seed", "template"})
    return inputs["cache_dir"], {"data": fields, "content": content}


def validate_parts(inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return inputs["cache_dir"], {
        "rows": inputs["fetched"]["sha256"],
        "tokenizer": inputs["model"]["sha256"],
        "template": inputs["data"].template,
        "validation": inputs["validation"].model_dump(mode="json"),
        "max_seq_length": inputs["train"].max_seq_length,
    }


def prepare_parts(inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    data = inputs["data"]
    return inputs["cache_dir"], {
        "rows": inputs["fetched"]["sha256"],
        "split": data.model_dump(mode="json", include={"num_samples", "eval_samples", "seed", "template"}),
        "tokenizer": inputs["model"]["sha256"] if data.template == "chat" else None,
    }


def train_parts(inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return inputs["cache_dir"], {
        "model": inputs["model"]["sha256"],
        "rows": inputs["prepared"]["train_sha256"],
        "train": inputs["config"].train.model_dump(mode="json"),
    }


def export_parts(inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return inputs["cache_dir"], {
        "trained": Path(inputs["trained"]["stage_dir"]).name,
        "export": inputs["config"].export.model_dump(mode="json"),
    }


def evaluate_parts(inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    config = inputs["config"]
    prompts = Path(config.eval.prompts_file)
    return inputs["cache_dir"], {
        "model": inputs["model"]["sha256"],
        "trained": Path(inputs["trained"]["stage_dir"]).name,  # the training key: model, rows, settings, code
        "rows": inputs["prepared"]["eval_sha256"],
        "eval": config.eval.model_dump(mode="json"),
        "prompts": sha256_file(prompts) if prompts.is_file() else None,
        "template": config.data.template,
        "max_seq_length": config.train.max_seq_length,
    }
