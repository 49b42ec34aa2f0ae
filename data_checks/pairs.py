"""The Great Expectations gate for preference pairs: every check critical, failures named with row numbers.

    python -c "from data_checks.pairs import check_pairs; help(check_pairs)"

Checks (ids): columns, strings, non_empty, clean_text, identical (chosen == rejected teaches nothing),
token_length (formatted prompt + the longer answer + EOS within max_length), duplicates (a repeated pair),
held_out (the pair's prompt is one of the SFT held-out prompts: training on it would leak the evaluation),
min_rows. Derived columns feed the suite: `is_identical`, `is_repeat`, `is_held_out` and `n_tokens`.
Row numbers are 0-based positions in the rows given, as in `data_checks.suite`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from data_checks.suite import (
    CONTROL_OR_INVALID,
    CheckResult,
    GateNames,
    ValidationOutcome,
    _to_check,
    replace_invalid_unicode,
    run_expectations,
)
from smoltune.data.prompts import format_prompt

Row = dict[str, Any]
PAIR_COLUMNS = ("instruction", "input", "chosen", "rejected")
NON_EMPTY_PAIR_COLUMNS = ("instruction", "chosen", "rejected")
PAIR_GATE = GateNames("smoltune_preference_pairs", "preference_pairs", "all_pairs", "smoltune_pair_gate")


@dataclass(frozen=True)
class PairSettings:
    """The thresholds of the pair suite; unlike the SFT suite there are no warnings: every check stops the run."""

    min_pairs: int
    max_length: int


def check_pairs(
    rows: list[Row],
    tokenizer: Any,
    template: str,
    max_length: int,
    min_pairs: int,
    held_out_prompts: set[tuple[str, str]],
    docs_dir: Path | None = None,
) -> ValidationOutcome:
    """Run the pair suite on normalised pair rows (`smoltune.preference.shapes`); token lengths are measured
    with `tokenizer` on the prompt formatted by `template`. With `docs_dir`, Data Docs are built there."""
    settings = PairSettings(min_pairs=min_pairs, max_length=max_length)
    lengths = pair_lengths(rows, tokenizer, template)
    frame = with_pair_columns(rows, lengths, held_out_prompts)
    named = build_pair_expectations(settings)
    results, data_docs = run_expectations(frame, [expectation for _, _, expectation in named], PAIR_GATE, docs_dir)
    checks = [_to_check(check_id, name, "critical", results[e.id]) for check_id, name, e in named]
    for check in checks:
        if check.check_id == "token_length" and not check.success and not check.error:
            check.observed = tokens_over(check, lengths, max_length)
    return ValidationOutcome(
        success=all(c.success for c in checks), row_count=len(rows), checks=checks, data_docs=data_docs
    )


def _text(value: Any) -> str:
    """A value as the length check sees it: invalid unicode replaced (tokenizers reject it; clean_text reports
    it), anything that is not text empty (the strings check reports it)."""
    return replace_invalid_unicode(value) if isinstance(value, str) else ""


def pair_lengths(rows: list[Row], tokenizer: Any, template: str) -> list[int]:
    """Tokens of each pair as training sees its longer half: formatted prompt + longer answer + EOS (the
    prompt and each answer tokenised apart, as `smoltune.data.tokens.tokenize_example` does)."""
    if not rows:
        return []
    clean = [{k: _text(r.get(k)) for k in PAIR_COLUMNS} for r in rows]
    prompts = [format_prompt(r, template, tokenizer) for r in clean]
    counts = [
        [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        for texts in (prompts, [r["chosen"] for r in clean], [r["rejected"] for r in clean])
    ]
    return [p + max(c, r) + 1 for p, c, r in zip(*counts, strict=True)]


def with_pair_columns(rows: list[Row], lengths: list[int], held_out_prompts: set[tuple[str, str]]) -> pd.DataFrame:
    """The rows as a frame (object dtype: rows may hold anything, which the suite must report rather than pandas
    refuse) with lone surrogates made U+FFFD, plus the derived columns, computed from the rows themselves so
    that they exist even when a pair column is missing."""
    frame = pd.DataFrame(rows, dtype=object).reset_index(drop=True).map(_frame_value)
    stripped = [{k: v.strip() if isinstance(v, str) else v for k, v in r.items()} for r in rows]
    seen: set[str] = set()
    repeats = []
    for r in stripped:
        key = repr(tuple(r.get(k) for k in PAIR_COLUMNS))  # repr: values may be unhashable lists
        repeats.append(key in seen)
        seen.add(key)
    frame["is_identical"] = [
        isinstance(r.get("chosen"), str) and r.get("chosen") == r.get("rejected") for r in stripped
    ]
    frame["is_repeat"] = repeats
    frame["is_held_out"] = [
        isinstance(r.get("instruction"), str)
        and (r["instruction"], "" if r.get("input") is None else r["input"]) in held_out_prompts
        for r in stripped
    ]
    frame["n_tokens"] = lengths
    return frame


def _frame_value(value: Any) -> Any:
    """A cell as the suite can check it: lone surrogates become U+FFFD (see `data_checks.suite`), and a dict is
    wrapped in a list, because Great Expectations fails to list unexpected values that mix dicts with others."""
    return [value] if isinstance(value, dict) else replace_invalid_unicode(value)


def build_pair_expectations(settings: PairSettings) -> list[tuple[str, str, Any]]:
    """(check id, readable name, expectation) for the pair suite."""
    import great_expectations as gx

    ex = gx.expectations
    checks: list[tuple[str, str, Any]] = []
    for column in PAIR_COLUMNS:
        checks.append(("columns", f"column '{column}' present", ex.ExpectColumnToExist(column=column)))
        checks.append(("strings", f"'{column}' is text", ex.ExpectColumnValuesToBeOfType(column=column, type_="str")))
        checks.append(
            (
                "clean_text",
                f"'{column}' has no control characters or invalid unicode",
                ex.ExpectColumnValuesToNotMatchRegex(column=column, regex=CONTROL_OR_INVALID),
            )
        )
    for column in NON_EMPTY_PAIR_COLUMNS:
        checks.append(("non_empty", f"'{column}' not null", ex.ExpectColumnValuesToNotBeNull(column=column)))
        checks.append(
            (
                "non_empty",
                f"'{column}' not empty after strip",
                ex.ExpectColumnValuesToMatchRegex(column=column, regex=r"\S"),
            )
        )
    flags = (
        ("identical", "chosen differs from rejected", "is_identical"),
        ("duplicates", "no repeated (instruction, input, chosen, rejected)", "is_repeat"),
        ("held_out", "prompt is not one of the SFT held-out prompts", "is_held_out"),
    )
    for check_id, name, column in flags:
        checks.append((check_id, name, ex.ExpectColumnValuesToBeInSet(column=column, value_set=[False])))
    checks.append(
        (
            "token_length",
            f"formatted prompt + longer answer fits max_length ({settings.max_length} tokens)",
            ex.ExpectColumnValuesToBeBetween(column="n_tokens", max_value=settings.max_length),
        )
    )
    checks.append(
        (
            "min_rows",
            f"at least {settings.min_pairs} pairs",
            ex.ExpectTableRowCountToBeBetween(min_value=settings.min_pairs),
        )
    )
    return checks


def tokens_over(check: CheckResult, lengths: list[int], max_length: int) -> str:
    """How far the example rows are over, e.g. "row 3: 41 tokens over; row 7: 5 tokens over (and 2 more rows)"."""
    text = "; ".join(f"row {i}: {lengths[i] - max_length} tokens over" for i in check.example_rows)
    more = check.unexpected_count - len(check.example_rows)
    return text + (f" (and {more} more rows)" if more > 0 else "")
