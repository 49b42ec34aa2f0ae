"""Generated data files, in every format a user's bytes arrive in, through the fetch stage's reader: each ends in
rows that can be stored or in exactly one `SmoltuneError` (one line, a documented exit code), never a traceback.

    .venv/bin/pytest -q tests/fuzz                          # the CI profile (a few seconds per test)
    make fuzz                                              # the deep profile: thousands of examples
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smoltune.config import DataConfig
from smoltune.data.stage import fetch_dataset
from smoltune.errors import SmoltuneError
from tests.fuzz.strategies import nested

COLUMNS = ["instruction", "input", "output", "messages", "conversations", "text", "prompt", "response", "x"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_values = nested(scalars, [*COLUMNS, "role", "content"], width=4, max_leaves=12)
records = st.lists(st.dictionaries(st.sampled_from(COLUMNS), json_values, max_size=5), max_size=6)


def outcome(path: Path) -> None:
    """The fetch stage on `path`: stored rows that read back as JSON, or one SmoltuneError."""
    out = Path(tempfile.mkdtemp(dir=path.parent))
    try:
        fetched = fetch_dataset(DataConfig(source=str(path)), out)
    except SmoltuneError as err:
        assert str(err).strip() and "Traceback" not in str(err)
        assert not (out / "raw.jsonl").exists()  # nothing half-written for the cache to trust
        return
    lines = Path(fetched.rows_file).read_text(encoding="utf-8").split("\n")[:-1]  # JSONL: one row per "\n"
    assert len(lines) == fetched.rows and all(isinstance(json.loads(line), dict) for line in lines)


FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)


@FUZZ
@given(st.binary(max_size=400), st.sampled_from([".json", ".jsonl", ".csv", ".parquet"]))
def test_arbitrary_bytes(tmp_path: Path, data: bytes, suffix: str) -> None:
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / f"rows{suffix}"
    path.write_bytes(data)
    outcome(path)


@FUZZ
@given(records, st.sampled_from(["json", "jsonl", "wrapped"]), st.sampled_from(["utf-8", "utf-16", "latin-1"]))
def test_generated_json(tmp_path: Path, rows: list[dict], layout: str, encoding: str) -> None:
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    if layout == "jsonl":
        path, text = folder / "rows.jsonl", "\n".join(json.dumps(r) for r in rows)
    else:
        path, text = folder / "rows.json", json.dumps({"data": rows} if layout == "wrapped" else rows)
    path.write_bytes(text.encode(encoding, errors="replace"))
    outcome(path)


@FUZZ
@given(st.sampled_from(["[" * 5000 + "]" * 5000, '[{"instruction": 1' + "0" * 5000 + "}]", '[{"a": 1e999}]', "[NaN]"]))
def test_json_edge_numbers_and_nesting(tmp_path: Path, text: str) -> None:
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "rows.json"
    path.write_text(text)
    outcome(path)
    jsonl = path.with_suffix(".jsonl")
    jsonl.write_text(text.replace("\n", " "))
    outcome(jsonl)


@FUZZ
@given(st.lists(st.lists(st.text(max_size=20), min_size=1, max_size=4), max_size=6), st.sampled_from([",", ";", "\t"]))
def test_generated_csv(tmp_path: Path, table: list[list[str]], sep: str) -> None:
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "rows.csv"
    path.write_text("\n".join(sep.join(json.dumps(c) if sep in c else c for c in row) for row in table))
    outcome(path)


def arrow_column(kind: str, n: int, draw: Any) -> pa.Array:
    values: dict[str, Any] = {
        "text": st.text(max_size=20),
        "int": st.integers(-(2**62), 2**62),
        "float": st.floats(),
        "bool": st.booleans(),
        "bytes": st.binary(max_size=10),
        "timestamp": st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2100, 1, 1)),
        "date": st.dates(min_value=dt.date(1970, 1, 1), max_value=dt.date(2100, 1, 1)),
        "decimal": st.decimals(min_value=-1000, max_value=1000, places=2, allow_nan=False),
        "list": st.lists(st.text(max_size=8), max_size=3),
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": st.text(max_size=12)}),
            max_size=3,
        ),
        "struct": st.fixed_dictionaries({"a": st.integers(0, 9), "b": st.text(max_size=5)}),
    }
    items = [draw(values[kind]) if i % 3 else draw(st.none() | values[kind]) for i in range(n)]
    if kind == "decimal":
        items = [None if v is None else decimal.Decimal(v) for v in items]
    return pa.array(items)


KINDS = ["text", "int", "float", "bool", "bytes", "timestamp", "date", "decimal", "list", "messages", "struct"]


@FUZZ
@given(
    st.data(),
    st.dictionaries(st.sampled_from(COLUMNS), st.sampled_from(KINDS), min_size=1, max_size=4),
    st.integers(1, 5),
)
def test_generated_parquet(tmp_path: Path, data: st.DataObject, kinds: dict[str, str], n: int) -> None:
    table = pa.table({name: arrow_column(kind, n, data.draw) for name, kind in kinds.items()})
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "rows.parquet"
    pq.write_table(table, path)
    outcome(path)


def test_parquet_values_that_are_not_json(tmp_path: Path) -> None:
    """Timestamps, dates, decimals and bytes (the classes found by the generated tables) are stored as text, and
    bytes that are not UTF-8 as an object the gate reports as not text."""
    table = pa.table({
        "instruction": [dt.datetime(2020, 1, 2, 3, 4)], "output": [b"ok"], "input": [b"\xff"],
        "price": pa.array([decimal.Decimal("1.10")]), "day": [dt.date(2020, 1, 2)],
    })  # fmt: skip
    pq.write_table(table, tmp_path / "rows.parquet")
    fetched = fetch_dataset(DataConfig(source=str(tmp_path / "rows.parquet")), tmp_path / "out")
    row = json.loads(Path(fetched.rows_file).read_text())
    assert row["instruction"] == "2020-01-02T03:04:00" and row["output"] == "ok" and row["input"] == {"bytes": 1}


def test_jsonl_rows_holding_line_separators_inside_strings(tmp_path: Path) -> None:
    """U+0085 and U+2028 are legal unescaped inside JSON strings; they are not line ends (found by the deep run)."""
    path = tmp_path / "rows.jsonl"
    path.write_text('{"instruction": "a\u0085b", "output": "c\u2028d"}\r\n{"instruction": "e", "output": "f"}\n')
    fetched = fetch_dataset(DataConfig(source=str(path)), tmp_path / "out")
    assert fetched.rows == 2
    rows = [json.loads(line) for line in Path(fetched.rows_file).read_text().split("\n")[:-1]]
    assert rows[0]["instruction"] == "a\u0085b" and rows[0]["output"] == "c\u2028d"
