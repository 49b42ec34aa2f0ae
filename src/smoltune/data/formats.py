"""Normalise records of any supported shape into Alpaca rows (`instruction`, `input`, `output`).

    python -c "from smoltune.data.formats import normalise; \
print(normalise([{'conversations': [{'from': 'human', 'value': 'Hi'}, {'from': 'gpt', 'value': 'Hello'}]}]))"

Shapes:
- Alpaca: `instruction`, optional `input`, `output`.
- ShareGPT: `conversations`, a list of {from: system|human|gpt, value}.
- OpenAI-style: `messages`, a list of {role: system|user|assistant, content}.
- anything else through `data.columns`, a mapping from your column names to ours (question -> instruction).

A conversation becomes one row per assistant reply: the user turn it answers is the instruction, the reply the
output, and the system message plus the earlier exchanges the input (so nothing of a multi-turn conversation is
dropped, and only replies are trained on). Values are kept as they are (not cast to text) so that the data
checks can report a number where a string belongs.
"""

from __future__ import annotations

from typing import Any

from smoltune.errors import DataError

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


def conversation_to_rows(record: Row, shape: str) -> list[Row]:
    """One row per assistant turn that answers a user turn, so every reply is trained on (and every user and
    system turn is prompt, masked out of the loss). The reply's user turn is the instruction; the system
    message and the earlier exchanges are the input. A conversation without such a pair gives one row with
    the missing parts as None, which the data checks report with its row number."""
    turns = turns_of(record, shape)
    extras = {k: v for k, v in record.items() if k not in ("conversations", "messages")}
    system = next((str(text) for role, text in turns if role == "system" and text is not None), "")
    rows, history = [], [system] if system else []
    for (role, text), (next_role, reply) in zip(turns, turns[1:], strict=False):
        if role == "user" and next_role == "assistant":
            rows.append({**extras, "instruction": text, "input": "\n".join(history), "output": reply})
        if role in ("user", "assistant"):
            history.append(f"{'User' if role == 'user' else 'Assistant'}: {text}")
    if rows:
        return rows
    user = next((text for role, text in turns if role == "user"), None)
    return [{**extras, "instruction": user, "input": system, "output": None}]


def alpaca_row(record: Row) -> Row:
    """The record with `instruction`, `input` and `output` present; a missing one is None (reported by the
    data checks with its row number, never a KeyError here)."""
    row = dict(record)  # the record's own key order: the same rows from any source hash the same
    row.setdefault("instruction", None)
    row.setdefault("output", None)
    row["input"] = "" if row.get("input") is None else row["input"]
    return row


def normalise(records: list[Row], columns: dict[str, str] | None = None, source: str = "data") -> list[Row]:
    """Alpaca rows from `records`, each record's shape detected on its own. Only a source where *no* record
    has a needed column is refused here (a mapping problem, named in one line); single rows with a missing
    or wrong value go to the data checks, which report them all with row numbers."""
    rows: list[Row] = []
    alpaca: list[Row] = []
    for record in (rename_columns(r, columns or {}) for r in records):
        shape = detect_shape(record)
        if shape == "alpaca":
            alpaca.append(record)
        rows.extend(conversation_to_rows(record, shape) if shape != "alpaca" else [alpaca_row(record)])
    missing = [c for c in ("instruction", "output") if alpaca and not any(c in r for r in alpaca)]
    if missing:
        found = ", ".join(dict.fromkeys(str(k) for r in alpaca[:50] for k in r))
        raise DataError(
            f"{source}: no {' or '.join(repr(c) for c in missing)} column in any row (found: {found[:300]}); "
            "map yours with data.columns, e.g. --set data.columns.question=instruction "
            "--set data.columns.answer=output"
        )
    return rows
