"""Formats: Alpaca, ShareGPT, OpenAI messages and column mappings all become Alpaca rows."""

from __future__ import annotations

import pytest

from smoltune.data.formats import normalise
from smoltune.errors import DataError


def test_alpaca_rows_get_an_input() -> None:
    rows = normalise([{"instruction": "Say hi.", "output": "hi"}, {"instruction": "A", "input": None, "output": "b"}])
    assert rows == [
        {"instruction": "Say hi.", "output": "hi", "input": ""},
        {"instruction": "A", "input": "", "output": "b"},
    ]


def test_sharegpt_conversations() -> None:
    record = {
        "id": 7,
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Capital of France?"},
            {"from": "gpt", "value": "Paris."},
            {"from": "human", "value": "And Italy?"},
            {"from": "gpt", "value": "Rome."},
        ],
    }
    # Every reply is a row (nothing of the conversation dropped); earlier exchanges are the later row's input.
    assert normalise([record]) == [
        {"id": 7, "instruction": "Capital of France?", "input": "Be brief.", "output": "Paris."},
        {
            "id": 7,
            "instruction": "And Italy?",
            "input": "Be brief.\nUser: Capital of France?\nAssistant: Paris.",
            "output": "Rome.",
        },
    ]


def test_openai_messages() -> None:
    record = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    assert normalise([record]) == [{"instruction": "2+2?", "input": "", "output": "4"}]


def test_conversation_without_a_reply_keeps_none_for_the_checks() -> None:
    [row] = normalise([{"messages": [{"role": "user", "content": "Hello?"}]}])
    assert row["instruction"] == "Hello?" and row["output"] is None


def test_column_mapping() -> None:
    rows = normalise(
        [{"question": "Q?", "answer": "A.", "topic": "x"}], {"question": "instruction", "answer": "output"}
    )
    assert rows == [{"instruction": "Q?", "output": "A.", "topic": "x", "input": ""}]


def test_unknown_columns_explain_the_mapping() -> None:
    with pytest.raises(DataError) as err:
        normalise([{"question": "Q?", "answer": "A."}], source="qa.csv")
    message = str(err.value)
    assert message.startswith("qa.csv: no 'instruction' or 'output' column in any row (found: question, answer)")
    assert "data.columns.question=instruction" in message


def test_rows_keep_their_key_order_so_the_same_rows_hash_the_same() -> None:
    import json

    from smoltune.data.builtin import builtin_dataset

    rows = builtin_dataset()[:40]  # the built-in rows, as a user might export them to a file and back
    assert json.dumps(normalise(json.loads(json.dumps(rows)))) == json.dumps(rows)
