"""The Great Expectations gate: passes good rows, names each failed expectation with counts and rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from data_checks.gate import check_dataset
from data_checks.suite import DataValidationError, SuiteSettings, run_checks
from smoltune.config import ValidationConfig
from smoltune.data.builtin import generate_rows
from smoltune.files import write_jsonl

CHECKS_WITHOUT_TOKENS = 3 * 3 + 2 * 2 + 2  # per column: present, text, clean; non-empty x2 x2; duplicates, rows


def failed_by_name(outcome) -> dict:  # noqa: ANN001
    return {c.name: c for c in outcome.checks if not c.success}


def test_builtin_rows_pass() -> None:
    outcome = run_checks(pd.DataFrame(generate_rows(200)), SuiteSettings())
    assert outcome.success and outcome.row_count == 200
    assert all(c.success for c in outcome.checks) and len(outcome.checks) == CHECKS_WITHOUT_TOKENS


def test_bad_rows_fail_with_names_counts_and_rows() -> None:
    rows = generate_rows(12)
    rows[3]["instruction"] = "   "
    rows[7]["output"] = ""
    rows[9]["output"] = None
    rows[10]["input"] = 42
    rows[11]["output"] = "bell\x07"
    rows[2]["instruction"] = "broken \ud800 text"
    outcome = run_checks(pd.DataFrame(rows, dtype=object), SuiteSettings(min_rows=20))
    assert not outcome.success
    failed = failed_by_name(outcome)
    assert set(failed) == {
        "'instruction' not empty after strip",
        "'output' not empty after strip",
        "'output' not null",
        "'input' is text",
        "'output' has no control characters or invalid unicode",
        "'instruction' has no control characters or invalid unicode",
        "at least 20 rows",
    }
    assert failed["'instruction' not empty after strip"].example_rows == [3]
    assert failed["'output' not empty after strip"].example_rows == [7]
    assert failed["'output' not null"].example_rows == [9]
    assert failed["'input' is text"].example_rows == [10]
    assert failed["'output' has no control characters or invalid unicode"].example_rows == [11]
    assert failed["'instruction' has no control characters or invalid unicode"].example_rows == [2]
    assert failed["at least 20 rows"].observed == 12

    message = str(DataValidationError(outcome, "rows.jsonl"))
    assert "rows.jsonl" in message and "training was not started" in message
    assert (
        "'output' not empty after strip (expect_column_values_to_match_regex): 1 failing rows; e.g. rows 7" in message
    )


def test_examples_are_capped_at_five_rows() -> None:
    rows = generate_rows(20)
    for row in rows[:8]:
        row["output"] = " "
    [check] = [c for c in run_checks(pd.DataFrame(rows), SuiteSettings()).checks if not c.success]
    assert check.unexpected_count == 8 and check.example_rows == [0, 1, 2, 3, 4]


def test_duplicates_warn_by_default_and_can_be_made_critical() -> None:
    rows = generate_rows(20)
    rows += [dict(rows[0]), dict(rows[1]), dict(rows[2])]  # 3 repeats of 23 rows = 13%
    outcome = run_checks(pd.DataFrame(rows), SuiteSettings(max_duplicate_rate=0.05))
    assert outcome.success
    [warning] = outcome.warnings
    assert warning.check_id == "duplicates" and warning.unexpected_count == 3 and warning.example_rows == [20, 21, 22]
    strict = run_checks(pd.DataFrame(rows), SuiteSettings(max_duplicate_rate=0.05, severity={"duplicates": "critical"}))
    assert not strict.success
    assert run_checks(pd.DataFrame(rows), SuiteSettings(max_duplicate_rate=0.2)).warnings == []


def test_missing_column_is_reported() -> None:
    df = pd.DataFrame([{"instruction": f"a{i}", "output": "b"} for i in range(3)])
    outcome = run_checks(df, SuiteSettings(min_rows=1))
    assert "column 'input' present" in {c.name for c in outcome.failed_critical}
    assert not outcome.success


def test_token_length_uses_the_real_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    rows = generate_rows(30)
    rows[5]["output"] = "word " * 400
    rows[8]["input"] = "half a surrogate \udc80"
    raw = write_jsonl(tmp_path / "raw.jsonl", rows)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    outcome = check_dataset(raw, ValidationConfig(), tokenizer, "alpaca", 256, docs_dir=tmp_path / "docs")
    failed = {c.check_id: c for c in outcome.failed_critical}
    assert set(failed) == {"token_length", "clean_text"}
    assert failed["token_length"].example_rows == [5] and failed["clean_text"].example_rows == [8]
    assert "fits max_seq_length (256 tokens)" in failed["token_length"].describe()
    relaxed = check_dataset(raw, ValidationConfig(severity={"clean_text": "warning"}), tokenizer, "alpaca", 4096)
    assert relaxed.success and [c.check_id for c in relaxed.warnings] == ["clean_text"]


def test_data_docs_are_written(tmp_path: Path) -> None:
    outcome = run_checks(pd.DataFrame(generate_rows(15)), SuiteSettings(), docs_dir=tmp_path / "docs")
    assert outcome.data_docs == str(tmp_path / "docs" / "index.html")
    assert list((tmp_path / "docs" / "validations").rglob("*.html"))


@pytest.mark.parametrize("min_rows", [1, 5])
def test_row_count_boundary(min_rows: int) -> None:
    assert run_checks(pd.DataFrame(generate_rows(5)), SuiteSettings(min_rows=min_rows)).success
