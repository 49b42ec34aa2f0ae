"""The training / held-out split: deterministic for a seed, and never a held-out question in training.

python -c "from smoltune.data.split import split_rows; help(split_rows)"
"""

from __future__ import annotations

import random
from typing import Any

from smoltune.errors import DataError

Row = dict[str, Any]
HELD_OUT = "test"


def row_key(row: Row) -> tuple[str, str]:
    """Identity of an example: two rows with the same instruction and input are the same question."""
    return str(row.get("instruction", "")).strip(), str(row.get("input", "") or "").strip()


def split_rows(rows: list[Row], num_samples: int, eval_samples: int, seed: int) -> tuple[list[Row], list[Row]]:
    """(training rows, held-out rows), deterministic for `seed`.

    Rows that carry `split: test` (the built-in dataset) form the held-out pool and the others the training
    pool; without that column, a shuffled slice is held out. Either way a training row never repeats a
    held-out question, even when the source holds duplicates."""
    if len(rows) < 2:
        raise DataError(f"need at least 2 rows to make a training and a held-out split, got {len(rows)}")
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
    if not train:
        raise DataError(
            f"no training rows left: all {len(pool)} rows outside the held-out set repeat a held-out question "
            f"({len(held_out)} held out); add rows or lower data.eval_samples"
        )
    return train[:num_samples], held_out


def shortfall(train: int, held_out: int, num_samples: int, eval_samples: int) -> str | None:
    """What the data could not give of what the job asked for, in words for the report (None: all of it).
    Fewer rows is not an error (a small dataset is still worth tuning on), but it must never be silent."""
    short = [
        f"{got} {what} rows of the {asked} asked for"
        for got, asked, what in ((train, num_samples, "training"), (held_out, eval_samples, "held-out"))
        if got < asked
    ]
    return f"the data gave {' and '.join(short)}" if short else None
