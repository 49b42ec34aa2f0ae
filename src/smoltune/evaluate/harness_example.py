"""The example lm-evaluation-harness task's data (configs/harness/): the default job's held-out rows.

    python -m smoltune.evaluate.harness_example      # rewrite configs/harness/smoltune_heldout.jsonl

The rows are this project's own (smoltune.data.builtin) and exactly those the default job holds out of
training (data.seed 3407, data.eval_samples 100), so its harness figure is measured on rows the adapter never
saw; a job with another data source or seed holds out other rows and must not use this task for promotion.
Only rows with one right answer (`check: exact`) are kept: the task scores exact match.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from smoltune.config import DataConfig
from smoltune.data.prompts import format_prompt
from smoltune.data.split import split_rows
from smoltune.data.stage import load_rows
from smoltune.files import write_jsonl

EXAMPLE_DATA = Path("configs/harness/smoltune_heldout.jsonl")
FIELDS = ("instruction", "input", "output", "family")


def example_rows(data: DataConfig | None = None) -> list[dict[str, Any]]:
    """The held-out rows of `data` (default: the default job's) that have one exact answer, with their prompt
    in the default job's template (alpaca)."""
    data = data or DataConfig()
    _, held_out = split_rows(load_rows(data), data.num_samples, data.eval_samples, data.seed)
    return [
        {**{k: row.get(k, "") for k in FIELDS}, "prompt": format_prompt(row, data.template)}
        for row in held_out
        if row.get("check") == "exact"
    ]


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else EXAMPLE_DATA
    print(write_jsonl(target, example_rows()))
