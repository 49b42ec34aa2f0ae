"""The pair gate: passes clean pairs, and names each failed check with its rows (0-based positions)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from data_checks.pairs import check_pairs
from data_checks.suite import DataValidationError
from smoltune.data.prompts import format_prompt
from smoltune.data.tokens import load_tokenizer

MAX_LENGTH = 256


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return load_tokenizer(str(tiny_model_dir))


def clean_pairs(n: int = 12) -> list[dict]:
    return [
        {
            "instruction": f"What is {i} plus {i}?",
            "input": "",
            "chosen": f"{2 * i}",
            "rejected": f"{2 * i + 1}",
            "row": i,
        }
        for i in range(n)
    ]


def gate(rows: list[dict], tokenizer: Any, held_out: set | None = None, min_pairs: int = 8, **kw: Any):  # noqa: ANN201
    return check_pairs(
        rows, tokenizer, "alpaca", kw.get("max_length", MAX_LENGTH), min_pairs, held_out or set(), kw.get("docs_dir")
    )


def failed(outcome) -> dict[str, list]:  # noqa: ANN001
    """check id -> the failed checks of that id."""
    out: dict[str, list] = {}
    for check in outcome.failed_critical:
        out.setdefault(check.check_id, []).append(check)
    return out


def over_by(row: dict, tokenizer: Any, answer: str) -> int:
    prompt = len(tokenizer(format_prompt(row), add_special_tokens=False)["input_ids"])
    return prompt + len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1 - MAX_LENGTH


def test_clean_pairs_pass(tokenizer: Any, tmp_path: Path) -> None:
    outcome = gate(clean_pairs(), tokenizer, docs_dir=tmp_path / "docs")
    assert outcome.success and outcome.row_count == 12
    assert all(c.success for c in outcome.checks)
    assert {c.check_id for c in outcome.checks} == {
        "columns", "strings", "non_empty", "clean_text", "identical", "token_length", "duplicates", "held_out",
        "min_rows",
    }  # fmt: skip
    assert outcome.data_docs == str(tmp_path / "docs" / "index.html")


def _set(key: str, value: Any) -> Callable[[list[dict]], None]:
    def mutate(rows: list[dict]) -> None:
        rows[5][key] = value

    return mutate


def _copy_row_2(rows: list[dict]) -> None:
    rows[5] = dict(rows[2])


def _same_answers(rows: list[dict]) -> None:
    rows[5]["rejected"] = " " + rows[5]["chosen"] + "  "


@pytest.mark.parametrize(
    ("check_id", "mutate"),
    [
        ("strings", _set("instruction", 42)),
        ("strings", _set("rejected", ["a", "list"])),
        ("non_empty", _set("chosen", None)),
        ("non_empty", _set("instruction", "   ")),
        ("clean_text", _set("rejected", "bell\x07")),
        ("clean_text", _set("input", "half a surrogate \udc80")),
        ("identical", _same_answers),
        ("duplicates", _copy_row_2),
        ("token_length", _set("chosen", "word " * 300)),
    ],
)
def test_each_check_fails_on_its_row(tokenizer: Any, check_id: str, mutate: Callable) -> None:
    rows = clean_pairs()
    mutate(rows)
    outcome = gate(rows, tokenizer)
    assert not outcome.success
    assert set(failed(outcome)) == {check_id}
    [check] = failed(outcome)[check_id]
    assert check.example_rows == [5] and check.unexpected_count == 1


def test_held_out_prompts_are_refused(tokenizer: Any) -> None:
    rows = clean_pairs()
    rows[7]["instruction"] = "  " + rows[7]["instruction"] + "\n"  # compared after strip
    held_out = {(clean_pairs()[7]["instruction"], ""), ("not in the pairs", "")}
    [check] = failed(gate(rows, tokenizer, held_out=held_out))["held_out"]
    assert check.example_rows == [7]


def test_columns_and_min_rows(tokenizer: Any) -> None:
    rows = [{k: v for k, v in r.items() if k != "rejected"} for r in clean_pairs(5)]
    by_id = failed(gate(rows, tokenizer, min_pairs=6))
    assert [c.name for c in by_id["columns"]] == ["column 'rejected' present"]
    [rows_check] = by_id["min_rows"]
    assert rows_check.observed == 5 and "at least 6 pairs" in rows_check.describe()


def test_token_length_says_how_many_tokens_over(tokenizer: Any) -> None:
    rows = clean_pairs()
    rows[3]["chosen"] = "word " * 300
    rows[7]["rejected"] = "plus " * 260  # the longer answer counts, whichever side it is
    [check] = failed(gate(rows, tokenizer))["token_length"]
    assert check.example_rows == [3, 7]
    expected = (
        f"row 3: {over_by(rows[3], tokenizer, rows[3]['chosen'])} tokens over; "
        f"row 7: {over_by(rows[7], tokenizer, rows[7]['rejected'])} tokens over"
    )
    assert check.observed == expected
    assert re.search(r"row 3: [1-9]\d* tokens over", check.describe())


def test_any_content_is_reported_not_crashed_on(tokenizer: Any, tmp_path: Path) -> None:
    rows = clean_pairs()
    rows[1].update(chosen={"a": 1}, rejected=float("nan"))
    rows[2].update(instruction=None, input=None)
    rows[3].update(instruction="bad \ud800 unicode", chosen=["x"], rejected=["x"])
    del rows[4]["input"]
    rows[5].update(chosen=[{"role": "assistant", "content": "bad \udc80"}], rejected={"content": "b"})
    outcome = gate(rows, tokenizer, docs_dir=tmp_path / "docs")
    assert not outcome.success and not any(c.error for c in outcome.checks)
    assert outcome.data_docs is not None
    by_name = {c.name: c.example_rows for c in outcome.failed_critical}
    assert by_name["'chosen' is text"] == [1, 3, 5] and by_name["'rejected' is text"] == [3, 5]
    assert by_name["'instruction' not null"] == [2] and by_name["'rejected' not null"] == [1]
    assert (
        3
        in next(
            c for c in outcome.checks if c.name == "'instruction' has no control characters or invalid unicode"
        ).example_rows
    )
    empty = gate([], tokenizer)
    assert not empty.success and "min_rows" in failed(empty)


def test_the_error_lists_the_failing_checks(tokenizer: Any) -> None:
    rows = clean_pairs()
    rows[2]["rejected"] = rows[2]["chosen"]
    rows[4] = dict(rows[0])
    message = str(DataValidationError(gate(rows, tokenizer), "pairs.jsonl"))
    assert "pairs.jsonl (12 rows)" in message and "training was not started" in message
    assert "chosen differs from rejected (expect_column_values_to_be_in_set): 1 failing rows; e.g. rows 2" in message
    assert "no repeated (instruction, input, chosen, rejected)" in message and "e.g. rows 4" in message
