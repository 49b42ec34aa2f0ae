"""Preference-pair shapes: standard, conversational, implicit-prompt and Alpaca records all become pair rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smoltune.config import PreferenceConfig
from smoltune.errors import DataError
from smoltune.files import sha256_file
from smoltune.preference.shapes import detect_pair_shape, normalise_pairs, read_pairs


def msg(role: str, content: object) -> dict:
    return {"role": role, "content": content}


STANDARD = {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome."}
ALPACA = {"instruction": "Translate.", "input": "chat", "chosen": "cat", "rejected": "dog"}
ULTRAFEEDBACK = {
    "prompt": "Capital of France?",
    "prompt_id": "abc",
    "chosen": [msg("user", "Capital of France?"), msg("assistant", "Paris.")],
    "rejected": [msg("user", "Capital of France?"), msg("assistant", "Rome.")],
    "score_chosen": 9.0,
}
HH = {
    "chosen": "\n\nHuman: Hi!\n\nAssistant: Hello.\n\nHuman: What is 2+2?\n\nAssistant: It is 4.",
    "rejected": "\n\nHuman: Hi!\n\nAssistant: Hello.\n\nHuman: What is 2+2?\n\nAssistant: It is 5.",
}


@pytest.mark.parametrize(
    ("record", "shape"),
    [(STANDARD, "standard"), (ALPACA, "alpaca"), (ULTRAFEEDBACK, "conversational"), (HH, "implicit_prompt")],
)
def test_each_shape_is_detected(record: dict, shape: str) -> None:
    assert detect_pair_shape(record) == shape


def test_standard_pairs() -> None:
    rows, shape = normalise_pairs([STANDARD, {**STANDARD, "prompt": "Capital of Italy?", "family": "geo"}], {})
    assert shape == "standard"
    assert rows == [
        {"instruction": "Capital of France?", "input": "", "chosen": "Paris.", "rejected": "Rome.", "row": 0},
        {
            "instruction": "Capital of Italy?",
            "input": "",
            "chosen": "Paris.",
            "rejected": "Rome.",
            "row": 1,
            "family": "geo",
        },
    ]


def test_alpaca_pairs_keep_their_input() -> None:
    rows, shape = normalise_pairs(
        [ALPACA, {"instruction": "Say hi.", "input": None, "chosen": "hi", "rejected": ""}], {}
    )
    assert shape == "alpaca"
    assert rows == [
        {"instruction": "Translate.", "input": "chat", "chosen": "cat", "rejected": "dog", "row": 0},
        {"instruction": "Say hi.", "input": "", "chosen": "hi", "rejected": "", "row": 1},
    ]


def test_ultrafeedback_conversations() -> None:
    # The prompt is what precedes the final assistant message; the string `prompt` column is the shape's own.
    [row], shape = normalise_pairs([ULTRAFEEDBACK], {})
    assert shape == "conversational"
    assert row == {
        "instruction": "Capital of France?",
        "input": "",
        "chosen": "Paris.",
        "rejected": "Rome.",
        "row": 0,
        "prompt_id": "abc",
        "score_chosen": 9.0,
    }


def test_multi_turn_conversation_with_a_system_message() -> None:
    history = [msg("system", "Be brief."), msg("user", "Hi!"), msg("assistant", "Hello."), msg("user", "2+2?")]
    record = {"chosen": [*history, msg("assistant", "4")], "rejected": [*history, msg("assistant", "5")]}
    [row], _ = normalise_pairs([record], {})
    assert row["instruction"] == "2+2?"
    assert row["input"] == "System: Be brief.\nUser: Hi!\nAssistant: Hello."
    assert (row["chosen"], row["rejected"]) == ("4", "5")


def test_trl_conversational_with_a_prompt_list() -> None:
    record = {
        "prompt": [msg("user", "Hi!"), msg("assistant", "Hello."), msg("user", "2+2?")],
        "chosen": [msg("assistant", "4")],
        "rejected": [msg("assistant", "5")],
    }
    [row], _ = normalise_pairs([record], {})
    assert row == {
        "instruction": "2+2?",
        "input": "User: Hi!\nAssistant: Hello.",
        "chosen": "4",
        "rejected": "5",
        "row": 0,
    }


def test_hh_prompt_is_split_at_the_last_assistant_marker() -> None:
    [row], shape = normalise_pairs([HH], {})
    assert shape == "implicit_prompt"
    assert row == {
        "instruction": "What is 2+2?",
        "input": "User: Hi!\nAssistant: Hello.",
        "chosen": "It is 4.",
        "rejected": "It is 5.",
        "row": 0,
    }


def test_single_turn_hh() -> None:
    record = {
        "chosen": "\n\nHuman: Name a colour.\n\nAssistant: Red",
        "rejected": "\n\nHuman: Name a colour.\n\nAssistant: No.",
    }
    [row], _ = normalise_pairs([record], {})
    assert row == {"instruction": "Name a colour.", "input": "", "chosen": "Red", "rejected": "No.", "row": 0}


def test_implicit_prompt_without_a_marker_is_cut_at_a_word_boundary() -> None:
    # The texts share "The answer is 1" but not the whole number: the prompt ends at the last whitespace.
    [row], _ = normalise_pairs([{"chosen": "The answer is 12.", "rejected": "The answer is 13."}], {})
    assert row == {"instruction": "The answer is", "input": "", "chosen": "12.", "rejected": "13.", "row": 0}


def test_column_mapping() -> None:
    records = [{"question": "Capital of France?", "good": "Paris.", "bad": "Rome.", "id": 3}]
    rows, shape = normalise_pairs(records, {"question": "prompt", "good": "chosen", "bad": "rejected"})
    assert shape == "standard"
    assert rows == [
        {"instruction": "Capital of France?", "input": "", "chosen": "Paris.", "rejected": "Rome.", "row": 0, "id": 3}
    ]


def test_an_unknown_shape_names_the_columns_and_the_shapes() -> None:
    with pytest.raises(DataError) as err:
        normalise_pairs([{"text": "hi", "label": 1}], {}, source="pairs.jsonl")
    message = str(err.value)
    assert "pairs.jsonl" in message and "text, label" in message
    for shape in ("standard", "conversational", "implicit_prompt", "alpaca", "preference.columns"):
        assert shape in message
    with pytest.raises(DataError, match="not a preference pair"):
        detect_pair_shape({"prompt": "hi", "completion": "hello"})


def test_a_forced_shape_without_its_columns_is_refused() -> None:
    with pytest.raises(DataError, match="read as standard pairs, but no row has 'prompt'"):
        normalise_pairs([HH], {}, shape="standard")


def test_malformed_rows_are_kept_with_none() -> None:
    records = [
        ULTRAFEEDBACK,
        {"chosen": [msg("user", "Hi")], "rejected": "not a list"},  # no assistant message; a string
        {"chosen": [msg("user", "A"), msg("assistant", "x")], "rejected": [msg("user", "B"), msg("assistant", "y")]},
        {"chosen": [msg("assistant", "x")], "rejected": [msg("assistant", "y")]},  # no user message
    ]
    rows, _ = normalise_pairs(records, {})
    assert [r["row"] for r in rows] == [0, 1, 2, 3]
    assert rows[1] == {"instruction": "Hi", "input": "", "chosen": None, "rejected": None, "row": 1}
    assert rows[2]["instruction"] is None  # different prompts: no one prompt for the pair
    assert rows[3]["instruction"] is None and rows[3]["chosen"] == "x"


def test_a_later_record_of_another_shape_is_malformed_not_fatal() -> None:
    rows, shape = normalise_pairs([STANDARD, {"chosen": "a", "rejected": "b"}, ULTRAFEEDBACK], {})
    assert shape == "standard"
    assert rows[1] == {"instruction": None, "input": "", "chosen": "a", "rejected": "b", "row": 1}
    assert isinstance(rows[2]["chosen"], list)  # kept as it is: the gate reports it as not text


def test_values_that_are_not_text_are_not_cast() -> None:
    records = [
        {"prompt": 42, "chosen": ["a"], "rejected": "b"},
        {"instruction": "x", "input": 7, "chosen": 1.5, "rejected": "b"},
    ]
    [row], shape = normalise_pairs(records[:1], {})
    assert shape == "standard"  # a list beside text is a value, not a message list
    assert (row["instruction"], row["chosen"], row["rejected"]) == (42, ["a"], "b")
    [row], _ = normalise_pairs(records[1:], {})
    assert (row["input"], row["chosen"]) == (7, 1.5)
    [row], _ = normalise_pairs(
        [{"chosen": [msg("user", "q"), msg("assistant", 5)], "rejected": [msg("user", "q"), msg("assistant", "b")]}], {}
    )
    assert row["chosen"] == 5
    [row], _ = normalise_pairs([{"prompt": "q", "chosen": None, "rejected": 2}], {})
    assert (row["chosen"], row["rejected"]) == (None, 2)
    [row], _ = normalise_pairs([{"chosen": 3, "rejected": "b"}], {}, shape="implicit_prompt")
    assert row == {"instruction": None, "input": "", "chosen": 3, "rejected": "b", "row": 0}


def test_read_pairs_from_a_local_file(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (HH, HH)) + "\n")
    rows, shape, identity = read_pairs(PreferenceConfig(source=str(path)))
    assert shape == "implicit_prompt" and len(rows) == 2 and rows[1]["row"] == 1
    assert identity == f"content sha256 {sha256_file(path)}"
    with pytest.raises(DataError, match="read as alpaca pairs"):
        read_pairs(PreferenceConfig(source=str(path), shape="alpaca"))


def test_read_pairs_leaves_the_builtin_pairs_to_their_generator() -> None:
    with pytest.raises(ValueError, match="built-in pairs"):
        read_pairs(PreferenceConfig(source="embedded"))
