"""The built-in preference pairs: checkable questions whose chosen answer is right and rejected answer wrong.

    python -c "from smoltune.preference.builtin import checkable_questions, plausible_wrong; \
q = checkable_questions(3); print([(r['output'], plausible_wrong(r)) for r in q])"

The questions are the built-in dataset's `train` rows with a checkable answer (never its `test` rows, which the
SFT evaluation holds out). As practitioners build pairs on-policy, the rejected answer is the SFT model's own
greedy answer where that answer is wrong (`pairs_from_answers`): the pairs then teach exactly what SFT got wrong.
Where the SFT model answered right, a plausible wrong answer stands in: a number off by a little, the order or
the case undone, the other parity. So the default job runs offline and its effect can be checked.
"""

from __future__ import annotations

import random
from typing import Any

from smoltune.data.builtin import builtin_dataset
from smoltune.data.split import HELD_OUT
from smoltune.evaluate.scoring import first_line, is_correct

Row = dict[str, Any]
CHECKABLE = ("exact", "normalised")


def checkable_questions(count: int, seed: int = 0) -> list[Row]:
    """`count` built-in training questions with checkable answers, families interleaved, for `seed`."""
    rows = [r for r in builtin_dataset() if r["check"] in CHECKABLE and r.get("split") != HELD_OUT]
    random.Random(seed).shuffle(rows)
    return [{k: v for k, v in r.items() if k != "split"} for r in rows[:count]]


def _wrong_number(value: int, rng: random.Random) -> str:
    return str(max(0, value + rng.choice([-1, 1]) * rng.randint(1, 9)) if value > 9 else (value + 1) % 10)


def plausible_wrong(row: Row, rng: random.Random | None = None) -> str:
    """A wrong answer to a built-in question that looks like a real one (never the reference itself)."""
    rng = rng or random.Random(row["instruction"] + row["input"])
    answer, family = row["output"], row.get("family")
    if answer.isdigit():
        wrong = _wrong_number(int(answer), rng)
    elif family == "parity":
        wrong = "odd" if answer == "even" else "even"
    elif family == "sort_numbers":
        wrong = ", ".join(reversed(answer.split(", ")))
    elif family == "uppercase":
        wrong = answer.lower()
    elif family == "reverse_word":
        wrong = row["input"]
    else:
        wrong = answer[::-1]
    # A palindrome, or a reversal that reads the same: one letter doubled is still wrong and plausible.
    return wrong if is_correct(wrong, answer, row.get("check", "exact")) is False else answer + answer[-1]


def pairs_from_answers(questions: list[Row], answers: list[str]) -> list[Row]:
    """Pairs (instruction, input, chosen, rejected, on_policy): rejected is the model's own answer (its first line,
    what the scorer reads) where it is wrong and not empty, else `plausible_wrong`."""
    pairs = []
    for row, answer in zip(questions, answers, strict=True):
        own = first_line(answer)
        on_policy = bool(own) and is_correct(own, row["output"], row["check"]) is False
        pairs.append(
            {
                "instruction": row["instruction"],
                "input": row["input"],
                "chosen": row["output"],
                "rejected": own if on_policy else plausible_wrong(row),
                "family": row["family"],
                "check": row["check"],
                "on_policy": on_policy,
            }
        )
    return pairs
