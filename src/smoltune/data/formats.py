"""Normalise records of any supported shape into Alpaca rows (`instruction`, `input`, `output`).

    python -c "from smoltune.data.formats import normalise; \
print(normalise([{'conversations': [{'from': 'human', 'value': 'Hi'}, {'from': 'gpt', 'value': 'Hello'}]}]))"

Shapes:
- Alpaca: `instruction`, optional `input`, `output`.
- ShareGPT: `conversations`, a list of {from: system|human|gpt, value}.
- OpenAI-style: `messages`, a list of {role: system|user|assistant, content}.
- anything else through `data.columns`, a mapping from your column names to ours (question -> instruction).

A conversation becomes one row: the first user turn is the instruction, the assistant's reply to it the output,
and a system message (if any) the input. Values are kept as they are (not cast to text) so that the data
checks can report a number where a string belongs.
"""

from __future__ import annotations

from typing import Any

from smoltune.data.sources import DataSourceError

Row = dict[str, Any]
_ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def detect_shape(record: Row) -> str:
    if isinstance(record.get("conversations"), list):
        return "sharegpt"
    if isinstance(record.get("messages"), list):
        return "messages"
    return "alpaca"


def rename_columns(record: Row, columns: dict[str, str]) -> Row:
    """Apply the user's mapping {their name: our name}; unmapped keys pass through."""
    return {columns.get(key, key): value for key, value in record.items()}


def turns_of(record: Row, shape: str) -> list[tuple[str, Any]]:
    """(role, text) pairs of a conversation, roles normalised to system / user / assistant."""
    key, role_key, text_key = (
        ("conversations", "from", "value") if shape == "sharegpt" else ("messages", "role", "content")
    )
    return [
        (_ROLE_NAMES.get(str(turn.get(role_key, "")).lower(), "other"), turn.get(text_key))
        for turn in record[key]
        if isinstance(turn, dict)
    ]


def conversation_to_row(record: Row, shape: str) -> Row:
    turns = turns_of(record, shape)
    system = next((text for role, text in turns if role == "system"), "")
    user_at = next((i for i, (role, _) in enumerate(turns) if role == "user"), None)
    reply = None
    if user_at is not None:
        reply = next((text for role, text in turns[user_at + 1 :] if role == "assistant"), None)
    extras = {k: v for k, v in record.items() if k not in ("conversations", "messages")}
    # Missing turns become None, which the data checks report with the row number.
    return {
        **extras,
        "instruction": turns[user_at][1] if user_at is not None else None,
        "input": system or "",
        "output": reply,
    }


def normalise(records: list[Row], columns: dict[str, str] | None = None, source: str = "data") -> list[Row]:
    """Alpaca rows from `records`. The shape is taken from the first record; a source without the needed
    columns gets one line naming what it has and how to map it."""
    if not records:
        return []
    mapped = [rename_columns(r, columns or {}) for r in records]
    shape = detect_shape(mapped[0])
    if shape != "alpaca":
        return [conversation_to_row(r, shape) for r in mapped]
    missing = [c for c in ("instruction", "output") if c not in mapped[0]]
    if missing:
        found = ", ".join(map(str, list(mapped[0])[:12]))
        raise DataSourceError(
            f"{source}: no {' or '.join(repr(c) for c in missing)} column (found: {found}); map yours with "
            "data.columns, e.g. --set data.columns.question=instruction --set data.columns.answer=output"
        )
    return [{**r, "input": "" if r.get("input") is None else r["input"]} for r in mapped]
