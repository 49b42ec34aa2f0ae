"""Scoring answers against references: exact match, normalised match and ROUGE-L.

python -c "from smoltune.evaluate.scoring import is_correct; print(is_correct('Odd.', 'odd', 'normalised'))"
"""

from __future__ import annotations

import re
import string
from statistics import mean
from typing import Any

MATCH_SCORES = ("accuracy", "exact_match", "normalised_match", "rouge_l")
_SPACE = re.compile(r"\s+")
_COMMA = re.compile(r"\s*,\s*")
_WORD = re.compile(r"\w+")


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


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased alphanumeric words (longest common subsequence).

    Written here because the reference package (rouge-score) has had no release since 2022 and pulls in
    nltk and absl for what is one dynamic-programming loop."""
    pred, ref = _WORD.findall(prediction.lower()), _WORD.findall(reference.lower())
    if not pred or not ref:
        return 0.0
    previous = [0] * (len(ref) + 1)
    for word in pred:
        current = [0]
        for j, ref_word in enumerate(ref, start=1):
            current.append(previous[j - 1] + 1 if word == ref_word else max(previous[j], current[j - 1]))
        previous = current
    common = previous[-1]
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def score_answers(rows: list[dict], answers: list[str]) -> dict[str, Any]:
    """Scores of generated answers against the rows' `output`.

    For every row: exact match, normalised match and ROUGE-L (first line of the answer). For rows whose
    `check` is exact / normalised (the built-in dataset): accuracy, overall and per family."""
    if not rows:
        return {
            "exact_match": None,
            "normalised_match": None,
            "rouge_l": None,
            "accuracy": None,
            "checked_rows": 0,
            "by_family": {},
        }
    firsts = [first_line(a) for a in answers]
    references = [str(r["output"]) for r in rows]
    scores: dict[str, Any] = {
        "exact_match": round(mean(float(a == ref.strip()) for a, ref in zip(firsts, references, strict=True)), 4),
        "normalised_match": round(
            mean(
                float(normalise_answer(a) == normalise_answer(ref)) for a, ref in zip(firsts, references, strict=True)
            ),
            4,
        ),
        "rouge_l": round(mean(rouge_l(a, ref) for a, ref in zip(firsts, references, strict=True)), 4),
    }
    checked = [
        (row.get("family", "all"), verdict)
        for row, answer in zip(rows, answers, strict=True)
        if (verdict := is_correct(answer, str(row["output"]), str(row.get("check", "")))) is not None
    ]
    by_family: dict[str, list[bool]] = {}
    for family, verdict in checked:
        by_family.setdefault(family, []).append(verdict)
    return {
        **scores,
        "accuracy": round(mean(v for _, v in checked), 4) if checked else None,
        "checked_rows": len(checked),
        "by_family": {f: round(mean(v), 4) for f, v in sorted(by_family.items())},
    }
