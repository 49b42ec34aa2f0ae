"""Read preference pairs of any supported shape into normalised pair rows.

    python -c "from smoltune.preference.shapes import normalise_pairs; \
print(normalise_pairs([{'prompt': 'Hi', 'chosen': 'Hello!', 'rejected': 'Go away.'}], {}))"

Shapes (`preference.shape`, or 'auto' to detect it from the first record):
- standard: `prompt`, `chosen`, `rejected` text (TRL's standard preference format).
- conversational: `chosen` and `rejected` lists of {role, content} messages, either each holding the whole
  conversation (UltraFeedback binarized) or only the answer, with the conversation in a `prompt` list (TRL).
- implicit_prompt: only `chosen` and `rejected`, full texts that share the prompt as a prefix (Anthropic HH).
- alpaca: `instruction`, optional `input`, and `chosen` / `rejected` text.
- anything else through `preference.columns`, a mapping from your column names to ours (question -> prompt).

Every record becomes one row {instruction, input, chosen, rejected, row} (`row`: the 0-based source row), with
the record's other keys carried along. As in `smoltune.data.formats`, values are never cast to text and a record
that does not make a pair gives None where a part is missing: the pair gate reports both by row number.
"""

from __future__ import annotations

import re
from typing import Any

from smoltune.config import PAIR_SHAPES, PreferenceConfig
from smoltune.data.formats import rename_columns, turns_of
from smoltune.data.sources import Download
from smoltune.data.stage import source_records
from smoltune.errors import DataError
from smoltune.redaction import redact
from smoltune.sources import source_kind

Row = dict[str, Any]
Turn = tuple[str, Any]

PAIR_KEYS = ("instruction", "input", "chosen", "rejected")
# The keys a shape consumes (not carried along as extras), and those at least one record must have.
OWN_KEYS = {
    "standard": ("prompt", "chosen", "rejected"),
    "conversational": ("prompt", "chosen", "rejected"),
    "implicit_prompt": ("chosen", "rejected"),
    "alpaca": ("instruction", "input", "chosen", "rejected"),
}
REQUIRED_KEYS = {
    "standard": ("prompt", "chosen", "rejected"),
    "conversational": ("chosen", "rejected"),
    "implicit_prompt": ("chosen", "rejected"),
    "alpaca": ("instruction", "chosen", "rejected"),
}
ACCEPTED = (
    "standard (prompt, chosen, rejected text), conversational (chosen and rejected message lists, optionally a "
    "prompt list), implicit_prompt (chosen and rejected full texts sharing the prompt), alpaca (instruction, "
    "optional input, chosen, rejected)"
)
ASSISTANT_MARKER = "Assistant:"
# Anthropic HH's turn markers: "\n\nHuman: ..." and "\n\nAssistant: ..." (the first one may lack the newlines).
_HH_TURN = re.compile(r"(?:\A\s*|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def detect_pair_shape(record: Row) -> str:
    """The shape of one (already renamed) record, one of PAIR_SHAPES; DataError when it has none of them."""
    if "chosen" in record and "rejected" in record:
        # Message lists on both sides (a missing one aside); a list beside text is a value the gate reports.
        sides = [value for value in (record["chosen"], record["rejected"]) if value is not None]
        if sides and all(isinstance(value, list) for value in sides):
            return "conversational"
        if "instruction" in record:
            return "alpaca"
        if "prompt" in record:
            return "standard"
        return "implicit_prompt"
    found = ", ".join(str(key) for key in record) or "none"
    raise DataError(
        f"not a preference pair: found columns {found}; accepted shapes: {ACCEPTED}. Map your column names with "
        "preference.columns, e.g. --set preference.columns.question=prompt --set preference.columns.good=chosen"
    )


def normalise_pairs(
    records: list[Row], columns: dict[str, str], shape: str = "auto", source: str = "pairs"
) -> tuple[list[Row], str]:
    """Pair rows from `records` and the shape they were read as. The shape is detected from the first record
    when 'auto'; a later record of another shape is read as this one, so what it lacks is None (reported by the
    gate). Only a source where no record has a column the shape needs is refused here, in one line."""
    renamed = [rename_columns(record, columns) for record in records]
    if not renamed:
        raise DataError(f"{source}: no records to read preference pairs from")
    if shape == "auto":
        try:
            shape = detect_pair_shape(renamed[0])
        except DataError as err:
            raise DataError(f"{source}: row 0 is {err}") from None
    if shape not in PAIR_SHAPES:
        raise ValueError(f"unknown pair shape {shape!r}; one of {', '.join(PAIR_SHAPES)} or 'auto'")
    missing = [key for key in REQUIRED_KEYS[shape] if not any(key in record for record in renamed)]
    if missing:
        found = ", ".join(dict.fromkeys(str(key) for record in renamed[:50] for key in record))
        raise DataError(
            f"{source}: read as {shape} pairs, but no row has {' or '.join(map(repr, missing))} (found: "
            f"{found[:300]}); set preference.shape or map your names with preference.columns"
        )
    return [pair_row(record, shape, number) for number, record in enumerate(renamed)], shape


def pair_row(record: Row, shape: str, number: int) -> Row:
    """One normalised row of a record read as `shape`; the record's other keys travel along."""
    if shape == "conversational":
        pair = conversational_pair(record)
    elif shape == "implicit_prompt":
        pair = implicit_pair(record.get("chosen"), record.get("rejected"))
    else:
        prompt_key = "prompt" if shape == "standard" else "instruction"
        extra = record.get("input") if shape == "alpaca" else ""
        pair = {
            "instruction": record.get(prompt_key),
            "input": "" if extra is None else extra,
            "chosen": record.get("chosen"),
            "rejected": record.get("rejected"),
        }
    skip = {*OWN_KEYS[shape], *PAIR_KEYS, "row"}
    return {**pair, "row": number, **{k: v for k, v in record.items() if k not in skip}}


def conversational_pair(record: Row) -> Row:
    """The prompt is every message before the final assistant message (a `prompt` message list first, when
    given); its last user message is the instruction and the other messages, as text, the input. A side that
    is not a message list, or has no assistant message, gives None for its answer; a pair whose chosen and
    rejected conversations differ before their final answers has no one prompt: instruction None."""
    lead = messages(record.get("prompt")) or []
    sides = [messages(record.get(key)) for key in ("chosen", "rejected")]
    (chosen_context, chosen), (rejected_context, rejected) = (
        split_final_answer(lead + turns) if turns is not None else (None, None) for turns in sides
    )
    context = chosen_context if chosen_context is not None else rejected_context
    instruction, extra = split_context(context) if context is not None else (None, "")
    if None not in (chosen_context, rejected_context) and chosen_context != rejected_context:
        instruction = None
    return {"instruction": instruction, "input": extra, "chosen": chosen, "rejected": rejected}


def messages(value: Any) -> list[Turn] | None:
    """(role, content) of a message list, roles normalised to system / user / assistant (ShareGPT's from/value
    is read too); None when `value` is not a list."""
    if not isinstance(value, list):
        return None
    sharegpt = any(isinstance(m, dict) and "from" in m for m in value)
    return turns_of({"conversations" if sharegpt else "messages": value}, "sharegpt" if sharegpt else "messages")


def split_final_answer(turns: list[Turn]) -> tuple[list[Turn], Any]:
    """The turns before the last assistant message, and that message's content (None when there is none)."""
    for index in range(len(turns) - 1, -1, -1):
        if turns[index][0] == "assistant":
            return turns[:index], turns[index][1]
    return turns, None


def split_context(turns: list[Turn]) -> tuple[Any, str]:
    """(instruction, input): the last user message as it is, and the other turns rendered as "Role: text" lines
    (the system message, earlier exchanges). No user message: instruction None."""
    users = [index for index, (role, _) in enumerate(turns) if role == "user"]
    last = users[-1] if users else None
    rest = [f"{role.capitalize()}: {'' if text is None else text}" for i, (role, text) in enumerate(turns) if i != last]
    return (turns[last][1] if last is not None else None), "\n".join(rest)


def implicit_pair(chosen: Any, rejected: Any) -> Row:
    """Split two full texts at their shared prompt: the longest common prefix, cut back to the end of its last
    "Assistant:" marker (else to its last whitespace, so no word is split). The prompt's last "Human:" turn is
    the instruction, earlier turns the input; the remainders, leading whitespace dropped, are the answers."""
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        return {"instruction": None, "input": "", "chosen": chosen, "rejected": rejected}
    shared = len(_common_prefix(chosen, rejected))
    marker = chosen.rfind(ASSISTANT_MARKER, 0, shared)
    if marker >= 0:
        cut = marker + len(ASSISTANT_MARKER)
    else:
        cut = max((i + 1 for i in range(shared) if chosen[i].isspace()), default=0)
    instruction, extra = hh_prompt(chosen[:cut])
    return {
        "instruction": instruction,
        "input": extra,
        "chosen": chosen[cut:].lstrip(),
        "rejected": rejected[cut:].lstrip(),
    }


def _common_prefix(a: str, b: str) -> str:
    size = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return a[:size]


def hh_prompt(prompt: str) -> tuple[Any, str]:
    """(instruction, input) of an HH-style prompt ("\\n\\nHuman: q\\n\\nAssistant:"); a prompt without turn
    markers is all instruction. Text before the first marker goes into the input as a system message."""
    parts = _HH_TURN.split(prompt)
    if len(parts) == 1:
        return prompt.strip(), ""
    turns: list[Turn] = [("system", parts[0].strip())] if parts[0].strip() else []
    turns += [(_HH_ROLES[role], text.strip()) for role, text in zip(parts[1::2], parts[2::2], strict=True)]
    if turns and turns[-1] == ("assistant", ""):
        turns.pop()  # the marker the answers follow
    return split_context(turns)


def read_pairs(pref: PreferenceConfig, prefetched: Download | None = None) -> tuple[list[Row], str, str]:
    """(pair rows, their shape, what identifies their content) of a file, URL or hub `pref.source`, read as SFT
    rows are read (smoltune.data.stage.source_records). A URL source already downloaded (for the cache key) is
    passed as `prefetched` and read from disk. An offline fallback is noted at the end of the identity text."""
    if source_kind(pref.source) == "embedded":
        raise ValueError("the built-in pairs are generated from the SFT model, not read by read_pairs")
    got = source_records(pref.as_data_config(), prefetched)
    rows, shape = normalise_pairs(got.rows, pref.columns, pref.shape, source=redact(pref.source))
    return rows, shape, got.identity + (f"; {got.note}" if got.note else "")
