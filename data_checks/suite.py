"""The Great Expectations suite that gates training, and the function that runs it on a DataFrame.

    python -c "import pandas as pd; from data_checks.suite import run_checks, SuiteSettings; \
print(run_checks(pd.DataFrame({'instruction': ['hi'], 'input': [''], 'output': ['']}), SuiteSettings(min_rows=1)))"

Checks (ids as used by `validation.severity`): columns, strings, non_empty, clean_text, duplicates,
token_length, answer_tokens, min_rows. Each has a severity: `critical` failures stop the flow before training,
`warning` failures only go into the report. Derived columns feed the suite: `is_repeat` (the row repeats an
earlier instruction + input), `n_tokens` (the formatted example's length with the real tokenizer) and
`n_answer_tokens` (answer tokens left after truncation to max_seq_length: a row with none trains nothing).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from smoltune.config import DEFAULT_SEVERITY, Severity
from smoltune.errors import DataError

REQUIRED_COLUMNS = ("instruction", "input", "output")
NON_EMPTY_COLUMNS = ("instruction", "output")
MAX_EXAMPLES = 5
# C0 controls except tab / newline / carriage return, DEL, and U+FFFD, the mark of text that was not valid
# unicode (lone surrogates are turned into it first, see `with_derived_columns`). Written with escapes
# that both Python's `re` and Arrow's RE2 (pandas 3 strings) understand.
CONTROL_OR_INVALID = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|" + "\ufffd"


@dataclass(frozen=True)
class SuiteSettings:
    """The thresholds of the suite; `max_seq_length` None skips the token-length check (no tokenizer)."""

    min_rows: int = 10
    max_duplicate_rate: float = 0.05
    max_seq_length: int | None = None
    severity: dict[str, Severity] = field(default_factory=dict)

    def severity_of(self, check_id: str) -> Severity:
        return self.severity.get(check_id, DEFAULT_SEVERITY.get(check_id, "critical"))


@dataclass
class CheckResult:
    """One expectation's outcome, in words a user can act on."""

    check_id: str
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
    data_docs: str | None = None

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
            "data_docs": self.data_docs,
            "checks": [asdict(c) for c in self.checks],
        }


class DataValidationError(DataError):
    """Raised by the flow when critical expectations fail; lists each one."""

    def __init__(self, outcome: ValidationOutcome, source: str, details: str | None = None) -> None:
        self.outcome = outcome
        lines = "\n".join(f"  - {c.describe()}" for c in outcome.failed_critical)
        where = f"\nAll results and the Data Docs: {details}" if details else ""
        super().__init__(
            f"data validation failed for {source} ({outcome.row_count} rows); training was not started:\n{lines}"
            + where
        )


def with_derived_columns(
    df: pd.DataFrame, token_counts: list[tuple[int, int]] | None, max_seq_length: int | None = None
) -> pd.DataFrame:
    """Add `is_repeat` and, from (prompt, answer) token counts, `n_tokens` and `n_answer_tokens` (answer tokens
    left after truncation to `max_seq_length`: 0 means the row trains nothing and its loss would be NaN);
    row numbers stay 0-based positions.
    Lone surrogates (invalid unicode that JSON can carry) become U+FFFD, which the clean-text check reports;
    left as they are, they would make the check itself fail on conversion to Arrow strings."""
    frame = df.reset_index(drop=True).map(replace_invalid_unicode)
    if {"instruction", "input"} <= set(frame.columns):
        keys = frame[["instruction", "input"]].astype(str).apply(lambda col: col.str.strip())
        frame["is_repeat"] = keys.duplicated(keep="first")
    if token_counts is not None:
        frame["n_tokens"] = [p + a for p, a in token_counts]
        limit = max_seq_length or max((p + a for p, a in token_counts), default=0)
        frame["n_answer_tokens"] = [max(0, min(p + a, limit) - p) for p, a in token_counts]
    return frame


def replace_invalid_unicode(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def build_expectations(settings: SuiteSettings) -> list[tuple[str, str, Any]]:
    """(check id, readable name, expectation) for the training-data suite."""
    import great_expectations as gx

    ex = gx.expectations
    checks: list[tuple[str, str, Any]] = []
    for column in REQUIRED_COLUMNS:
        checks.append(("columns", f"column '{column}' present", ex.ExpectColumnToExist(column=column)))
        checks.append(("strings", f"'{column}' is text", ex.ExpectColumnValuesToBeOfType(column=column, type_="str")))
        checks.append(
            (
                "clean_text",
                f"'{column}' has no control characters or invalid unicode",
                ex.ExpectColumnValuesToNotMatchRegex(column=column, regex=CONTROL_OR_INVALID),
            )
        )
    for column in NON_EMPTY_COLUMNS:
        checks.append(("non_empty", f"'{column}' not null", ex.ExpectColumnValuesToNotBeNull(column=column)))
        # A value made only of whitespace is as empty as "" for training.
        checks.append(
            (
                "non_empty",
                f"'{column}' not empty after strip",
                ex.ExpectColumnValuesToMatchRegex(column=column, regex=r"\S"),
            )
        )
    checks.append(
        (
            "duplicates",
            f"at most {settings.max_duplicate_rate:.0%} repeated (instruction, input)",
            ex.ExpectColumnValuesToBeInSet(
                column="is_repeat", value_set=[False], mostly=max(1e-9, 1 - settings.max_duplicate_rate)
            ),
        )
    )
    if settings.max_seq_length is not None:
        checks.append(
            (
                "token_length",
                f"formatted example fits max_seq_length ({settings.max_seq_length} tokens)",
                ex.ExpectColumnValuesToBeBetween(column="n_tokens", max_value=settings.max_seq_length),
            )
        )
        checks.append(
            (
                "answer_tokens",
                f"answer keeps at least one token within max_seq_length ({settings.max_seq_length})",
                ex.ExpectColumnValuesToBeBetween(column="n_answer_tokens", min_value=1),
            )
        )
    checks.append(
        (
            "min_rows",
            f"at least {settings.min_rows} rows",
            ex.ExpectTableRowCountToBeBetween(min_value=settings.min_rows),
        )
    )
    return checks


def data_docs_site(base_directory: Path) -> dict[str, Any]:
    return {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(base_directory)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }


@dataclass(frozen=True)
class GateNames:
    """What a gate's Great Expectations objects are called (they show in its Data Docs)."""

    suite: str
    asset: str
    batch: str
    checkpoint: str


TRAINING_GATE = GateNames("smoltune_training_data", "training_rows", "all_rows", "smoltune_gate")


def run_expectations(
    frame: pd.DataFrame, expectations: list[Any], names: GateNames, docs_dir: Path | None = None
) -> tuple[dict[str, Any], str | None]:
    """Each expectation's result by expectation id, from an ephemeral Great Expectations context, and the Data
    Docs index when `docs_dir` is given (then built there). Shared by the training-data gate and the pair gate."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    context = gx.get_context(mode="ephemeral")
    actions = []
    if docs_dir is not None:
        context.add_data_docs_site("smoltune", data_docs_site(docs_dir))
        actions.append(UpdateDataDocsAction(name="data_docs", site_names=["smoltune"]))
    batch_definition = (
        context.data_sources.add_pandas("smoltune")
        .add_dataframe_asset(names.asset)
        .add_batch_definition_whole_dataframe(names.batch)
    )
    suite = context.suites.add(gx.ExpectationSuite(name=names.suite))
    for expectation in expectations:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(data=batch_definition, suite=suite, name=names.suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=names.checkpoint,
            validation_definitions=[definition],
            actions=actions,
            result_format={"result_format": "COMPLETE", "partial_unexpected_count": MAX_EXAMPLES},
        )
    )
    [result] = checkpoint.run(batch_parameters={"dataframe": frame}).run_results.values()
    index = docs_dir / "index.html" if docs_dir is not None else None
    # Great Expectations returns results in its own order; callers match them back by expectation id.
    return {r.expectation_config.id: r for r in result.results}, (
        str(index) if index is not None and index.is_file() else None
    )


def run_checks(
    df: pd.DataFrame,
    settings: SuiteSettings,
    token_counts: list[tuple[int, int]] | None = None,
    docs_dir: Path | None = None,
) -> ValidationOutcome:
    """Validate `df` in an ephemeral Great Expectations context; with `docs_dir`, also build Data Docs there."""
    named = build_expectations(settings)
    frame = with_derived_columns(df, token_counts, settings.max_seq_length)
    by_id, data_docs = run_expectations(frame, [e for _, _, e in named], TRAINING_GATE, docs_dir)
    checks = [
        _to_check(check_id, name, settings.severity_of(check_id), by_id[expectation.id])
        for check_id, name, expectation in named
    ]
    return ValidationOutcome(
        success=not any(not c.success and c.severity == "critical" for c in checks),
        row_count=len(df),
        checks=checks,
        data_docs=data_docs,
    )


def _to_check(check_id: str, name: str, severity: Severity, result: Any) -> CheckResult:
    expectation = result.expectation_config.type
    info = result.exception_info or {}
    if info.get("raised_exception"):
        message = str(info.get("exception_message", "")).splitlines()[0][:200]
        return CheckResult(check_id, name, expectation, severity, False, error=message)
    details = result.result or {}
    indexes = details.get("unexpected_index_list") or []
    return CheckResult(
        check_id,
        name,
        expectation,
        severity,
        bool(result.success),
        unexpected_count=int(details.get("unexpected_count") or 0),
        example_rows=[int(i) for i in indexes[:MAX_EXAMPLES] if isinstance(i, int)],
        # Table-level expectations (row count) report a value instead of failing rows.
        observed=details.get("observed_value") if "unexpected_count" not in details else None,
    )
