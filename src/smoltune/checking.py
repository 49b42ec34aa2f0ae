"""Scoring answers against references: exact match and normalised match.

python -c "from smoltune.checking import is_correct; print(is_correct('Odd.', 'odd', 'normalised'))"
"""

from __future__ import annotations

import re
import string

_SPACE = re.compile(r"\s+")
_COMMA = re.compile(r"\s*,\s*")


def first_line(text: str) -> str:
    """The answer part of a generation: models often continue after the answer on a new line."""
    return text.strip().split("\n", 1)[0].strip() if text.strip() else ""


def normalise_answer(text: str) -> str:
    """Lower case, single spaces, `a , b` -> `a, b`, no surrounding punctuation or quotes."""
    text = _COMMA.sub(", ", _SPACE.sub(" ", text.strip().lower()))
    return text.strip(string.punctuation.replace(",", "") + " \"'")


def is_correct(prediction: str, reference: str, check: str) -> bool | None:
    """True / False for checkable rows; None for open-ended ones (`check == "open"`) or unknown checks."""
    answer = first_line(prediction)
    if check == "exact":
        return answer == reference.strip()
    if check == "normalised":
        return normalise_answer(answer) == normalise_answer(reference)
    return None
