"""Data: the built-in dataset, normalised loading, the held-out split and prompt templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from smoltune.config import DataConfig
from smoltune.data.builtin import FAMILIES, generate_rows
from smoltune.data.prompts import format_prompt
from smoltune.data.split import row_key, split_rows
from smoltune.data.stage import fetch_dataset, load_rows, prepare_dataset
from smoltune.errors import DataError
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
    with pytest.raises(DataError, match="at least 2 rows"):
        split_rows(rows[:1], 1, 1, 0)


def test_load_rows_normalises_a_mapped_csv(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\nWhat is 2+2?,4\n")
    config = DataConfig(source=str(path), columns={"question": "instruction", "answer": "output"})
    assert load_rows(config) == [{"instruction": "What is 2+2?", "output": "4", "input": ""}]


def test_builtin_dataset_has_fixed_disjoint_splits() -> None:
    rows = load_rows(DataConfig())
    train = [r for r in rows if r["split"] == "train"]
    held_out = [r for r in rows if r["split"] == "test"]
    assert len(train) >= 2000 and len(held_out) >= 200
    assert not {row_key(r) for r in train} & {row_key(r) for r in held_out}
    assert {r["family"] for r in held_out} == set(FAMILIES)
    checkable = [r for r in rows if r["check"] in ("exact", "normalised")]
    assert len(checkable) / len(rows) > 0.7


def test_split_uses_the_builtin_held_out_rows() -> None:
    rows = load_rows(DataConfig())
    train, held_out = split_rows(rows, num_samples=100, eval_samples=200, seed=3407)
    assert len(train) == 100 and len(held_out) == 200
    assert all(r["split"] == "train" for r in train) and all(r["split"] == "test" for r in held_out)
    assert split_rows(rows, 100, 200, 3407) == (train, held_out)
    assert split_rows(rows, 100, 200, 7)[0] != train


def test_prompt_template_contains_instruction_and_input() -> None:
    prompt = format_prompt({"instruction": " Add. ", "input": "1 and 2", "output": "3"})
    assert "### Instruction:\nAdd.\n" in prompt and "### Input:\n1 and 2\n" in prompt
    assert prompt.endswith("### Response:\n")


def test_chat_template_uses_the_tokenizer(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "<|im_start|>assistant:"
    )
    prompt = format_prompt({"instruction": "Add.", "input": "1 and 2"}, "chat", tokenizer)
    assert prompt == "<|im_start|>user\nAdd.\n\n1 and 2<|im_end|>\n<|im_start|>assistant:"
    with pytest.raises(ValueError, match="chat template"):
        format_prompt({"instruction": "Add."}, "chat", None)


def test_fetch_then_prepare_writes_disjoint_splits(tmp_path: Path) -> None:
    fetched = fetch_dataset(DataConfig(), tmp_path)
    assert fetched.rows >= 2200 and len(fetched.sha256) == 64
    prepared = prepare_dataset(fetched.rows_file, DataConfig(eval_samples=40), tmp_path)
    train, held_out = read_jsonl(prepared.train_file), read_jsonl(prepared.eval_file)
    assert (len(train), len(held_out)) == (100, 40) == (prepared.train_rows, prepared.eval_rows)
    assert all(r["prompt"].endswith("### Response:\n") and r["completion"] == r["output"] for r in train)
    assert not {row_key(r) for r in train} & {row_key(r) for r in held_out}
