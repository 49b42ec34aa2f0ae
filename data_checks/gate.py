"""The data gate as the flow uses it: rows on disk in, a Great Expectations verdict (and Data Docs) out.

python -c "from data_checks.gate import check_dataset; help(check_dataset)"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from data_checks.suite import SuiteSettings, ValidationOutcome, replace_invalid_unicode, run_checks
from smoltune.config import ValidationConfig
from smoltune.data.prompts import to_prompt_completion
from smoltune.data.tokens import example_lengths
from smoltune.files import read_jsonl


def formatted_lengths(rows: list[dict], tokenizer: Any, template: str) -> list[tuple[int, int]]:
    """(prompt, answer + EOS) token counts of each row as training will see it. Invalid unicode is replaced
    first (tokenizers reject it; the clean-text check reports it); a missing value counts as empty text (the
    non-empty checks report it)."""
    clean = [{k: replace_invalid_unicode(v) for k, v in r.items()} for r in rows]
    examples = [to_prompt_completion(r, template, tokenizer) for r in clean]
    return example_lengths(tokenizer, [e["prompt"] for e in examples], [e["completion"] for e in examples])


def check_dataset(
    raw_file: str | Path,
    validation: ValidationConfig,
    tokenizer: Any,
    template: str,
    max_seq_length: int,
    docs_dir: Path | None = None,
) -> ValidationOutcome:
    """Run the training-data suite on the rows of `raw_file`, token lengths measured with `tokenizer`."""
    rows = read_jsonl(raw_file)
    settings = SuiteSettings(
        min_rows=validation.min_rows,
        max_duplicate_rate=validation.max_duplicate_rate,
        max_seq_length=max_seq_length,
        severity=dict(validation.severity),
    )
    lengths = formatted_lengths(rows, tokenizer, template) if rows else []
    # object dtype: rows may hold anything (numbers where text belongs, invalid unicode) and the suite must
    # report it rather than pandas refusing to build the frame.
    return run_checks(pd.DataFrame(rows, dtype=object), settings, token_counts=lengths, docs_dir=docs_dir)
