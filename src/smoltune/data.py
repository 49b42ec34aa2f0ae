"""Data sources, the deterministic train / held-out split, and prompt formatting.

    python -c "from smoltune.data import load_rows; print(len(load_rows('embedded')))"

Rows are plain dicts in Alpaca form: `instruction`, `input` (may be empty), `output`; extra keys
(the built-in dataset's `family` and `check`) travel along untouched.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from smoltune.builtin_data import generate_rows

Row = dict[str, Any]

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


class DataSourceError(ValueError):
    """A dataset that cannot be read; the message names the file and the problem in one line."""


def load_rows(source: str) -> list[Row]:
    """Rows of `data.source`: `embedded` (generated) or a local .json / .jsonl file."""
    if source == "embedded":
        return generate_rows()
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataSourceError(f"{source}: no such file (data.source takes 'embedded' or a .json/.jsonl path)")
    if path.suffix == ".jsonl":
        return _read_jsonl_rows(path)
    if path.suffix == ".json":
        return _read_json_rows(path)
    raise DataSourceError(f"{path}: unsupported extension {path.suffix!r}; use .json or .jsonl")


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataSourceError(f"{path}: not UTF-8 text (byte {err.start})") from None
    if not text.strip():
        raise DataSourceError(f"{path}: the file is empty")
    return text


def _read_json_rows(path: Path) -> list[Row]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise DataSourceError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataSourceError(f"{path}: expected a JSON list of objects (Alpaca format)")
    return data


def _read_jsonl_rows(path: Path) -> list[Row]:
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataSourceError(f"{path}: line {number} is not valid JSON: {err.msg}") from None
        if not isinstance(row, dict):
            raise DataSourceError(f"{path}: line {number} is not a JSON object")
        rows.append(row)
    return rows


def row_key(row: Row) -> tuple[str, str]:
    """Identity of an example: two rows with the same instruction and input are the same question."""
    return str(row.get("instruction", "")).strip(), str(row.get("input", "") or "").strip()


def split_rows(rows: list[Row], num_samples: int, eval_samples: int, seed: int) -> tuple[list[Row], list[Row]]:
    """Shuffle by `seed`; the first `eval_samples` rows are held out, training takes up to `num_samples`
    of the rest. A training row never repeats a held-out question, even if the source has duplicates."""
    if len(rows) < 2:
        raise DataSourceError(f"need at least 2 rows to make a training and a held-out split, got {len(rows)}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    eval_count = min(eval_samples, len(rows) // 2)
    held_out = [rows[i] for i in order[:eval_count]]
    held_keys = {row_key(r) for r in held_out}
    train = [rows[i] for i in order[eval_count:] if row_key(rows[i]) not in held_keys][:num_samples]
    return train, held_out


def format_prompt(row: Row) -> str:
    """The Alpaca prompt for a row, ending where the model's answer starts."""
    return ALPACA_TEMPLATE.format(instruction=str(row["instruction"]).strip(), input=str(row.get("input") or ""))


def to_prompt_completion(row: Row) -> Row:
    """A training example: the prompt and the answer (tokenisation appends the model's EOS)."""
    return {**row, "prompt": format_prompt(row), "completion": str(row["output"])}


def fetch_dataset(source: str, out_dir: str | Path) -> dict[str, Any]:
    """Load `source` and store its rows as `out_dir/raw.jsonl`; returns the path, content hash and count."""
    from smoltune.files import sha256_file, write_jsonl

    rows = load_rows(source)
    path = write_jsonl(Path(out_dir) / "raw.jsonl", rows)
    return {"source": source, "path": str(path), "sha256": sha256_file(path), "rows": len(rows)}


def prepare_dataset(raw_file: str | Path, num_samples: int, eval_samples: int, seed: int, out_dir: str | Path) -> dict:
    """Split raw rows into `train.jsonl` and `eval.jsonl` with prompt/completion fields."""
    from smoltune.files import read_jsonl, write_jsonl

    train, held_out = split_rows(read_jsonl(raw_file), num_samples, eval_samples, seed)
    train_path = write_jsonl(Path(out_dir) / "train.jsonl", [to_prompt_completion(r) for r in train])
    eval_path = write_jsonl(Path(out_dir) / "eval.jsonl", [to_prompt_completion(r) for r in held_out])
    return {
        "train_file": str(train_path),
        "eval_file": str(eval_path),
        "train_rows": len(train),
        "eval_rows": len(held_out),
    }
