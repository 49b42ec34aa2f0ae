"""Data: the built-in dataset, file loaders with one-line errors, and the held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smoltune.builtin_data import FAMILIES, generate_rows
from smoltune.data import (
    DataSourceError,
    fetch_dataset,
    format_prompt,
    load_rows,
    prepare_dataset,
    row_key,
    split_rows,
)
from smoltune.files import read_jsonl


def test_builtin_rows_are_deterministic_distinct_and_varied() -> None:
    rows = generate_rows(600, seed=3)
    assert rows == generate_rows(600, seed=3)
    assert rows != generate_rows(600, seed=4)
    assert len({row_key(r) for r in rows}) == 600
    assert {r["family"] for r in rows} == set(FAMILIES)
    assert len(FAMILIES) >= 8
    for row in rows:
        assert row["instruction"].strip() and row["output"].strip()


def test_builtin_answers_are_correct() -> None:
    for row in generate_rows(300, seed=5):
        if row["family"] == "addition":
            a, b = map(int, row["input"].split(" and "))
            assert int(row["output"]) == a + b
        if row["family"] == "reverse_word":
            assert row["output"] == row["input"][::-1]
        if row["family"] == "sort_numbers":
            assert row["output"] == ", ".join(map(str, sorted(int(x) for x in row["input"].split(", "))))


def test_split_never_puts_a_held_out_question_in_training() -> None:
    rows = generate_rows(300, seed=0)
    rows += [dict(r) for r in rows[:50]]  # duplicates in the source must not leak across the split
    train, held_out = split_rows(rows, num_samples=200, eval_samples=40, seed=3407)
    assert len(held_out) == 40 and len(train) == 200
    assert not {row_key(r) for r in train} & {row_key(r) for r in held_out}
    assert split_rows(rows, 200, 40, 3407) == (train, held_out)
    assert split_rows(rows, 200, 40, 1) != (train, held_out)


def test_split_with_few_rows_keeps_half_for_training() -> None:
    rows = generate_rows(10, seed=0)
    train, held_out = split_rows(rows, num_samples=100, eval_samples=40, seed=0)
    assert len(held_out) == 5 and len(train) == 5
    with pytest.raises(DataSourceError, match="at least 2 rows"):
        split_rows(rows[:1], 1, 1, 0)


def test_json_and_jsonl_files_load(tmp_path: Path) -> None:
    rows = [{"instruction": "Say hi.", "input": "", "output": "hi"}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "a.jsonl").write_text(json.dumps(rows[0]) + "\n\n")
    assert load_rows(str(tmp_path / "a.json")) == rows
    assert load_rows(str(tmp_path / "a.jsonl")) == rows


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("trunc.json", b'[{"instruction": "a", "output": ', "invalid JSON at line 1"),
        ("latin.json", '[{"instruction": "caf\xe9"}]'.encode("latin-1"), "not UTF-8"),
        ("empty.jsonl", b"  \n", "the file is empty"),
        ("obj.json", b'{"instruction": "a"}', "expected a JSON list of objects"),
        ("bad.jsonl", b'{"instruction": "a"}\n{oops\n', "line 2 is not valid JSON"),
        ("rows.csv", b"a,b\n1,2\n", "unsupported extension"),
    ],
)
def test_unreadable_files_get_a_one_line_reason(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataSourceError) as err:
        load_rows(str(path))
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_names_the_way_out() -> None:
    with pytest.raises(DataSourceError, match="'embedded'"):
        load_rows("does/not/exist.jsonl")


def test_prompt_template_contains_instruction_and_input() -> None:
    prompt = format_prompt({"instruction": " Add. ", "input": "1 and 2", "output": "3"})
    assert "### Instruction:\nAdd.\n" in prompt and "### Input:\n1 and 2\n" in prompt
    assert prompt.endswith("### Response:\n")


def test_fetch_then_prepare_writes_disjoint_splits(tmp_path: Path) -> None:
    fetched = fetch_dataset("embedded", tmp_path)
    assert fetched["rows"] >= 2000 and len(fetched["sha256"]) == 64
    prepared = prepare_dataset(fetched["path"], 100, 40, 3407, tmp_path)
    train, held_out = read_jsonl(prepared["train_file"]), read_jsonl(prepared["eval_file"])
    assert (len(train), len(held_out)) == (100, 40) == (prepared["train_rows"], prepared["eval_rows"])
    assert all(r["prompt"].endswith("### Response:\n") and r["completion"] == r["output"] for r in train)
    assert not {row_key(r) for r in train} & {row_key(r) for r in held_out}
