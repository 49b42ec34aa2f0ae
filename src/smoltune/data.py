"""The data stage's library: load and normalise rows, split train / held-out, format prompts.

    python -c "from smoltune.config import DataConfig; from smoltune.data import load_rows; \
print(len(load_rows(DataConfig())))"

Rows are plain dicts in Alpaca form: `instruction`, `input` (may be empty), `output`; extra keys (the built-in
dataset's `family`, `check` and `split`) travel along untouched.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from smoltune.builtin_data import builtin_dataset
from smoltune.config import DataConfig
from smoltune.formats import normalise
from smoltune.sources import DataSourceError, load_records

Row = dict[str, Any]

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
HELD_OUT = "test"


def load_rows(data: DataConfig, cache_dir: Path | None = None) -> list[Row]:
    """Alpaca rows of `data.source`, whatever its location and shape."""
    if data.source == "embedded":
        return builtin_dataset()
    records = load_records(
        data.source,
        revision=data.revision,
        subset=data.subset,
        split=data.split,
        sha256=data.sha256,
        max_download_mb=data.max_download_mb,
        cache_dir=cache_dir,
    )
    return normalise(records, data.columns, source=data.source)


def row_key(row: Row) -> tuple[str, str]:
    """Identity of an example: two rows with the same instruction and input are the same question."""
    return str(row.get("instruction", "")).strip(), str(row.get("input", "") or "").strip()


def split_rows(rows: list[Row], num_samples: int, eval_samples: int, seed: int) -> tuple[list[Row], list[Row]]:
    """(training rows, held-out rows), deterministic for `seed`.

    Rows that carry `split: test` (the built-in dataset) form the held-out pool and the others the training
    pool; without that column, a shuffled slice is held out. Either way a training row never repeats a
    held-out question, even when the source holds duplicates."""
    if len(rows) < 2:
        raise DataSourceError(f"need at least 2 rows to make a training and a held-out split, got {len(rows)}")
    rng = random.Random(seed)
    if any(r.get("split") == HELD_OUT for r in rows):
        held_pool = [r for r in rows if r.get("split") == HELD_OUT]
        pool = [r for r in rows if r.get("split") != HELD_OUT]
        rng.shuffle(held_pool)
        held_out = held_pool[:eval_samples]
    else:
        pool = list(rows)
        rng.shuffle(pool)
        eval_count = min(eval_samples, len(rows) // 2)
        held_out, pool = pool[:eval_count], pool[eval_count:]
    rng.shuffle(pool)
    held_keys = {row_key(r) for r in held_out}
    train = [r for r in pool if row_key(r) not in held_keys]
    return train[:num_samples], held_out


def format_prompt(row: Row, template: str = "alpaca", tokenizer: Any = None) -> str:
    """The prompt for a row, ending where the model's answer starts."""
    instruction, extra = str(row["instruction"]).strip(), str(row.get("input") or "").strip()
    if template == "alpaca":
        return ALPACA_TEMPLATE.format(instruction=instruction, input=extra)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("data.template=chat needs a tokenizer with a chat template")
    content = f"{instruction}\n\n{extra}" if extra else instruction
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


def to_prompt_completion(row: Row, template: str = "alpaca", tokenizer: Any = None) -> Row:
    """A training example: the prompt and the answer (tokenisation appends the model's EOS)."""
    return {**row, "prompt": format_prompt(row, template, tokenizer), "completion": str(row["output"])}


def fetch_dataset(data: DataConfig, out_dir: str | Path) -> dict[str, Any]:
    """Load `data.source` and store its normalised rows as `out_dir/raw.jsonl`; returns path, hash, count."""
    from smoltune.files import sha256_file, write_jsonl

    rows = load_rows(data)
    path = write_jsonl(Path(out_dir) / "raw.jsonl", rows)
    return {"source": data.source, "path": str(path), "sha256": sha256_file(path), "rows": len(rows)}


def prepare_dataset(
    raw_file: str | Path, data: DataConfig, out_dir: str | Path, tokenizer: Any = None
) -> dict[str, Any]:
    """Split raw rows into `train.jsonl` and `eval.jsonl` with prompt / completion fields."""
    from smoltune.files import read_jsonl, sha256_file, write_jsonl

    train, held_out = split_rows(read_jsonl(raw_file), data.num_samples, data.eval_samples, data.seed)
    train_path = write_jsonl(
        Path(out_dir) / "train.jsonl", [to_prompt_completion(r, data.template, tokenizer) for r in train]
    )
    eval_path = write_jsonl(
        Path(out_dir) / "eval.jsonl", [to_prompt_completion(r, data.template, tokenizer) for r in held_out]
    )
    return {
        "train_file": str(train_path),
        "eval_file": str(eval_path),
        "train_sha256": sha256_file(train_path),
        "eval_sha256": sha256_file(eval_path),
        "train_rows": len(train),
        "eval_rows": len(held_out),
    }
