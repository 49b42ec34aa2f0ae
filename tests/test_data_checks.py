"""The Great Expectations gate: passes good rows, names each failed expectation and example rows."""

from __future__ import annotations

import pandas as pd
import pytest

from data_checks.suite import DataValidationError, run_checks
from smoltune.builtin_data import generate_rows


def test_builtin_rows_pass() -> None:
    outcome = run_checks(pd.DataFrame(generate_rows(200)), min_rows=10)
    assert outcome.success and outcome.row_count == 200
    assert all(c.success for c in outcome.checks)
    assert len(outcome.checks) == 8


def test_bad_rows_fail_with_names_counts_and_rows() -> None:
    rows = generate_rows(12)
    rows[3]["instruction"] = "   "
    rows[7]["output"] = ""
    rows[9]["output"] = None
    outcome = run_checks(pd.DataFrame(rows), min_rows=20)
    assert not outcome.success
    failed = {c.name: c for c in outcome.failed_critical}
    assert set(failed) == {
        "'instruction' not empty after strip",
        "'output' not empty after strip",
        "'output' not null",
        "at least 20 rows",
    }
    assert failed["'instruction' not empty after strip"].example_rows == [3]
    assert failed["'output' not empty after strip"].example_rows == [7]
    assert failed["'output' not null"].example_rows == [9]
    assert failed["at least 20 rows"].observed == 12

    message = str(DataValidationError(outcome, "rows.jsonl"))
    assert "rows.jsonl" in message and "training was not started" in message
    assert (
        "'output' not empty after strip (expect_column_values_to_match_regex): 1 failing rows; e.g. rows 7" in message
    )


def test_missing_column_is_reported() -> None:
    df = pd.DataFrame([{"instruction": "a", "output": "b"}] * 3)
    outcome = run_checks(df, min_rows=1)
    assert [c.name for c in outcome.failed_critical] == ["column 'input' present"]
    assert "failed" in outcome.failed_critical[0].describe()


@pytest.mark.parametrize("min_rows", [1, 5])
def test_row_count_boundary(min_rows: int) -> None:
    outcome = run_checks(pd.DataFrame(generate_rows(5)), min_rows=min_rows)
    assert outcome.success
