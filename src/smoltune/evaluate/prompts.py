"""The eval prompts file: prompts answered by the base and the tuned model side by side.

python -c "from smoltune.evaluate.prompts import load_eval_prompts as f; print(f('configs/eval_prompts.yaml'))"
"""

from __future__ import annotations

from pathlib import Path

from smoltune.errors import ConfigError, DataError
from smoltune.yaml_input import parse_yaml


class EvalPromptsError(DataError):
    """The eval prompts file is missing or malformed; the message names the file."""


def load_eval_prompts(path: str | Path) -> list[dict[str, str]]:
    """Prompts from YAML: a list of {instruction, input?} mappings (or plain strings)."""
    try:
        data = parse_yaml(Path(path).read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as err:
        raise EvalPromptsError(f"{path}: cannot read eval prompts: {err}") from None
    except ConfigError as err:
        raise EvalPromptsError(f"{path}: cannot read eval prompts: {err.problems[0]}") from None
    items = data.get("prompts") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise EvalPromptsError(f"{path}: expected a non-empty list under 'prompts'")
    prompts = []
    for number, item in enumerate(items, start=1):
        if isinstance(item, str):
            item = {"instruction": item}
        if not isinstance(item, dict) or not str(item.get("instruction", "")).strip():
            raise EvalPromptsError(f"{path}: prompt {number} needs a non-empty 'instruction'")
        prompts.append({"instruction": str(item["instruction"]), "input": str(item.get("input") or "")})
    return prompts
