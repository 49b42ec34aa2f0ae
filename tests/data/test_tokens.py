"""The training rows tokenised once by the prepare stage: the same ids as one row at a time, stored and read back
unchanged, and the training worker's rows from them equal to tokenising in the worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from smoltune.config import DataConfig, TrainConfig
from smoltune.data.builtin import generate_rows
from smoltune.data.stage import prepare_dataset
from smoltune.data.tokens import (
    IGNORE_INDEX,
    load_token_ids,
    load_tokenizer,
    save_token_ids,
    token_ids,
    tokenize_rows,
)
from smoltune.errors import ConfigError
from smoltune.files import read_jsonl, write_jsonl
from smoltune.train.spec import TrainSpec
from smoltune.train.trainer import rows_to_train


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):  # noqa: ANN201
    return load_tokenizer(str(tiny_model_dir))


def one_at_a_time(tokenizer: object, row: dict) -> tuple[list[int], list[int]]:
    prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    answer = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt, answer


def test_batched_ids_equal_one_row_at_a_time(tokenizer: object) -> None:
    rows = [{"prompt": "Q: " + r["instruction"] + "\n", "completion": r["output"]} for r in generate_rows(60, seed=5)]
    rows += [{"prompt": "", "completion": ""}, {"prompt": "  spaced  ", "completion": "é ü 日本"}]
    ids = token_ids(tokenizer, rows)
    assert [(p, c) for p, c in zip(ids.prompts, ids.completions, strict=True)] == [
        one_at_a_time(tokenizer, r) for r in rows
    ]
    assert token_ids(tokenizer, []).prompts == []


def test_stored_ids_read_back_unchanged(tokenizer: object, tmp_path: Path) -> None:
    rows = [{"prompt": r["instruction"], "completion": r["output"]} for r in generate_rows(40, seed=6)]
    rows.append({"prompt": "", "completion": ""})  # an empty prompt: zero-length slices must stay aligned
    ids = token_ids(tokenizer, rows)
    assert load_token_ids(save_token_ids(tmp_path / "t.npz", ids)) == ids
    assert (tmp_path / "t.npz").is_file() and not (tmp_path / "t.npz.npz").exists()


@pytest.mark.parametrize("mask_prompt", [True, False])
def test_worker_rows_from_stored_ids_equal_tokenising_in_the_worker(
    tiny_model_dir: Path, tokenizer: object, tmp_path: Path, mask_prompt: bool
) -> None:
    raw = write_jsonl(tmp_path / "raw.jsonl", generate_rows(50, seed=7))
    prepared = prepare_dataset(raw, DataConfig(num_samples=30, eval_samples=8, seed=0), tmp_path, tokenizer)
    assert prepared.train_tokens_file in prepared.outputs() and len(prepared.train_tokens_sha256 or "") == 64
    prompts = sorted(len(p) for p in load_token_ids(prepared.train_tokens_file).prompts)
    cut = prompts[len(prompts) // 2] + 2  # cuts most rows; leaves about half without an answer token when masked
    config = TrainConfig(max_seq_length=cut, train_on_responses_only=mask_prompt)
    stored = TrainSpec(str(tiny_model_dir), prepared.train_file, "w", {}, train_tokens=prepared.train_tokens_file)
    fresh = TrainSpec(str(tiny_model_dir), prepared.train_file, "w", {})
    rows = rows_to_train(stored, tokenizer, config)
    assert rows == rows_to_train(fresh, tokenizer, config)
    expected = tokenize_rows(tokenizer, read_jsonl(prepared.train_file), cut, mask_prompt)
    kept = [r for r in expected if any(label != IGNORE_INDEX for label in r["labels"])]
    assert rows == kept and all(len(r["input_ids"]) <= cut for r in rows)
    assert (len(kept) < len(expected)) if mask_prompt else (kept == expected)


def test_rows_with_no_answer_token_left_are_dropped_and_none_left_is_a_config_error(
    tiny_model_dir: Path, tokenizer: object, tmp_path: Path
) -> None:
    long_prompt = {"prompt": "word " * 80, "completion": "yes"}
    short = {"prompt": "Hi", "completion": "yes"}
    write_jsonl(tmp_path / "train.jsonl", [long_prompt, short])
    spec = TrainSpec(str(tiny_model_dir), str(tmp_path / "train.jsonl"), "w", {})
    rows = rows_to_train(spec, tokenizer, TrainConfig(max_seq_length=16))
    assert len(rows) == 1 and rows[0]["input_ids"] == tokenize_rows(tokenizer, [short], 16, True)[0]["input_ids"]
    write_jsonl(tmp_path / "train.jsonl", [long_prompt])
    with pytest.raises(ConfigError, match="train.max_seq_length"):
        rows_to_train(spec, tokenizer, TrainConfig(max_seq_length=16))
