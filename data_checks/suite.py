"""The Great Expectations suite that gates training, and the function that runs it on a DataFrame.

    python -c "import pandas as pd; from data_checks.suite import run_checks; \
print(run_checks(pd.DataFrame({'instruction': ['hi'], 'input': [''], 'output': ['']}), min_rows=1))"

Each expectation carries a severity: `critical` failures stop the flow before training, `warning`
failures only go into the report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pandas as pd

REQUIRED_COLUMNS = ("instruction", "input", "output")
NON_EMPTY_COLUMNS = ("instruction", "output")
MAX_EXAMPLES = 5

Severity = Literal["critical", "warning"]


@dataclass
class CheckResult:
    """One expectation's outcome, in words a user can act on."""

    name: str
    expectation: str
    severity: Severity
    success: bool
    unexpected_count: int = 0
    example_rows: list[int] = field(default_factory=list)
    observed: Any = None
    error: str | None = None

    def describe(self) -> str:
        if self.success:
            return f"{self.name}: passed"
        if self.error:
            return f"{self.name} ({self.expectation}): could not run: {self.error}"
        if self.observed is not None:
            return f"{self.name} ({self.expectation}): observed {self.observed}"
        if not self.unexpected_count:
            return f"{self.name} ({self.expectation}): failed"
        rows = ", ".join(map(str, self.example_rows))
        where = f"; e.g. rows {rows}" if rows else ""
        return f"{self.name} ({self.expectation}): {self.unexpected_count} failing rows{where}"


@dataclass
class ValidationOutcome:
    """The suite's verdict: `success` is False when any critical expectation failed."""

    success: bool
    row_count: int
    checks: list[CheckResult]

    @property
    def failed_critical(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success and c.severity == "critical"]

    @property
    def warnings(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success and c.severity == "warning"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "row_count": self.row_count,
            "checks": [asdict(c) for c in self.checks],
        }


class DataValidationError(RuntimeError):
    """Raised by the flow when critical expectations fail; lists each one."""

    def __init__(self, outcome: ValidationOutcome, source: str) -> None:
        self.outcome = outcome
        lines = "\n".join(f"  - {c.describe()}" for c in outcome.failed_critical)
        super().__init__(
            f"data validation failed for {source} ({outcome.row_count} rows); training was not started:\n{lines}"
        )


def build_expectations(min_rows: int) -> list[tuple[str, Severity, Any]]:
    """(name, severity, expectation) for the training-data suite."""
    import great_expectations as gx

    expectations: list[tuple[str, Severity, Any]] = [
        (f"column '{c}' present", "critical", gx.expectations.ExpectColumnToExist(column=c)) for c in REQUIRED_COLUMNS
    ]
    for column in NON_EMPTY_COLUMNS:
        expectations.append(
            (f"'{column}' not null", "critical", gx.expectations.ExpectColumnValuesToNotBeNull(column=column))
        )
        # A value made only of whitespace is as empty as "" for training.
        expectations.append(
            (
                f"'{column}' not empty after strip",
                "critical",
                gx.expectations.ExpectColumnValuesToMatchRegex(column=column, regex=r"\S"),
            )
        )
    expectations.append(
        (
            f"at least {min_rows} rows",
            "critical",
            gx.expectations.ExpectTableRowCountToBeBetween(min_value=min_rows),
        )
    )
    return expectations


def run_checks(df: pd.DataFrame, min_rows: int = 1) -> ValidationOutcome:
    """Validate `df` with an ephemeral Great Expectations context and summarise every expectation."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    batch_definition = (
        context.data_sources.add_pandas("smoltune")
        .add_dataframe_asset("training_rows")
        .add_batch_definition_whole_dataframe("all_rows")
    )
    named = build_expectations(min_rows)
    suite = context.suites.add(gx.ExpectationSuite(name="smoltune_training_data"))
    for _, _, expectation in named:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(data=batch_definition, suite=suite, name="smoltune_training_data")
    )
    result = definition.run(
        batch_parameters={"dataframe": df.reset_index(drop=True)},
        result_format={"result_format": "COMPLETE", "partial_unexpected_count": MAX_EXAMPLES},
    )
    # Great Expectations returns results in its own order; match them back by expectation id.
    by_id = {r.expectation_config.id: r for r in result.results}
    checks = [_to_check(name, severity, by_id[expectation.id]) for name, severity, expectation in named]
    return ValidationOutcome(
        success=not any(not c.success and c.severity == "critical" for c in checks),
        row_count=len(df),
        checks=checks,
    )


def _to_check(name: str, severity: Severity, result: Any) -> CheckResult:
    expectation = result.expectation_config.type
    info = result.exception_info or {}
    if info.get("raised_exception"):
        message = str(info.get("exception_message", "")).splitlines()[0][:200]
        return CheckResult(name, expectation, severity, False, error=message)
    details = result.result or {}
    indexes = details.get("unexpected_index_list") or []
    return CheckResult(
        name,
        expectation,
        severity,
        bool(result.success),
        unexpected_count=int(details.get("unexpected_count") or 0),
        example_rows=[int(i) for i in indexes[:MAX_EXAMPLES] if isinstance(i, int)],
        # Table-level expectations (row count) report a value instead of failing rows.
        observed=details.get("observed_value") if "unexpected_count" not in details else None,
    )
