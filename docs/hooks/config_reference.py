"""The configuration reference, generated from the pydantic models at every docs build (never written by hand).

    make docs                          # mkdocs runs this hook: docs/reference/configuration.md gets the tables
    python docs/hooks/config_reference.py > /tmp/configuration.md     # the generated Markdown alone

`config_reference(model)` is pure (a model class in, Markdown out) and walks the model recursively: one table
per section, every field with its dotted name (`train.lora.r`), type (with its constraints), default and the
description given in `Field(description=...)`, so the page cannot drift from `smoltune.config`.
"""

from __future__ import annotations

import enum
import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

# The line in docs/reference/configuration.md that the generated reference replaces.
MARKER = "<!-- config-reference -->"
PAGE = "reference/configuration.md"

# annotated_types constraint name -> how it reads in the type column
_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def anchor(dotted: str) -> str:
    """The HTML id of a section's heading: `train.lora` -> `train-lora` (dots and brackets are awkward in URLs)."""
    return dotted.replace("[]", "").replace(".", "-") or "top"


def _section_model(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """(model, is_list) when a field holds a nested model (or a list of them), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    optional = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(optional) == 1:
        return _section_model(optional[0])  # an optional section (`preference`): its fields are documented too
    if typing.get_origin(annotation) in (list, tuple, set, frozenset):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            return args[0], True
    return None


def type_name(annotation: Any) -> str:
    """A reader's spelling of a type: `int`, `str | None`, `"auto" | "hf"`, `list[str]`, `dict[str, str]`."""
    if annotation is None or annotation is type(None):
        return "None"
    if annotation is Any:
        return "any"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(json.dumps(value) for value in args)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " | ".join(names + (["None"] if type(None) in args else []))
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]" if inner else origin.__name__
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " | ".join(json.dumps(member.value) for member in annotation)
    return getattr(annotation, "__name__", str(annotation))


def constraints(field: FieldInfo) -> list[str]:
    """The field's validation constraints in words: `≥ 1`, `< 1.0`, `pattern ^...$`, `at least 1 item`."""
    found = []
    for item in field.metadata:
        for name, symbol in _BOUNDS.items():
            value = getattr(item, name, None)
            if value is not None:
                found.append(f"{symbol} {value}")
        if getattr(item, "min_length", None) is not None:
            found.append(f"at least {item.min_length} item(s)")
        if getattr(item, "max_length", None) is not None:
            found.append(f"at most {item.max_length} item(s)")
        if getattr(item, "pattern", None) is not None:
            found.append(f"pattern `{item.pattern}`")
    return found


def default_text(field: FieldInfo) -> str:
    """The default as YAML would take it (JSON spelling), including one made by a default_factory."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True, validated_data={})
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "its fields' defaults"
    if isinstance(value, enum.Enum):
        value = value.value
    try:
        return f"`{json.dumps(value, ensure_ascii=False)}`"
    except TypeError:
        return f"`{value!r}`"


def _cell(text: str) -> str:
    """Table-cell text: one line; outside code spans, HTML and Markdown specials escaped so a description reads as
    written (`runs_dir/<run name>/` is not a tag, `batch_size` no emphasis). Code spans are kept as they are:
    Python-Markdown's tables do not split a cell at a pipe inside backticks."""
    escapes = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "\\|", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]"}
    out, in_code = [], False
    for char in " ".join(text.split()):
        if char == "`":
            in_code = not in_code
        out.append(char if in_code else escapes.get(char, char))
    return "".join(out)


def _doc(model: type[BaseModel]) -> str:
    """A model's own docstring, if it wrote one (pydantic's BaseModel docstring does not count)."""
    doc = model.__dict__.get("__doc__")
    return " ".join(doc.split()) if doc else ""


def config_reference(
    model: type[BaseModel],
    prefix: str = "",
    level: int = 2,
    documented: dict[type[BaseModel], str] | None = None,
) -> str:
    """Markdown tables for `model` and every section nested in it: one heading and one table per section, one row
    per field (dotted name, type, default, description). A section model met twice is described once and the
    later field links to it; `documented` (model -> dotted name, filled in as it goes) carries that across calls."""
    sections: list[str] = []
    _walk(model, prefix, level, sections, documented if documented is not None else {})
    return "\n".join(sections)


def _walk(
    model: type[BaseModel], prefix: str, level: int, out: list[str], documented: dict[type[BaseModel], str]
) -> None:
    documented[model] = prefix
    title = f"`{prefix}`" if prefix else f"`{model.__name__}`"
    out += [f"{'#' * level} {title} {{ #{anchor(prefix or model.__name__)} }}", ""]
    if _doc(model):
        out += [_cell(_doc(model)), ""]
    out += ["| field | type | default | description |", "|---|---|---|---|"]
    nested: list[tuple[type[BaseModel], str]] = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}.{name}" if prefix else name
        section = _section_model(field.annotation)
        description = field.description or ""
        kind = type_name(field.annotation)
        if section is not None:
            sub, is_list = section
            sub_prefix = dotted + ("[]" if is_list else "")
            target = documented.get(sub, sub_prefix)
            if sub not in documented and all(sub is not m for m, _ in nested):
                nested.append((sub, sub_prefix))
            where = f"`{target}`" if target else f"`{sub.__name__}`"
            link = f"[{where}](#{anchor(target or sub.__name__)})"
            kind = f"list of {link}" if is_list else f"section {link}"
            description = description or _doc(sub) or "Its fields are in the table of that name below."
            kind_cell = ", ".join([kind, *(_cell(c) for c in constraints(field))])
        else:
            kind_cell = ", ".join([f"`{kind}`", *(_cell(c) for c in constraints(field))])
        row = [f"`{dotted}`", kind_cell, _cell(default_text(field)), _cell(description) or "—"]
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    for sub, sub_prefix in nested:
        if sub in documented:
            continue
        _walk(sub, sub_prefix, level + (1 if prefix else 0), out, documented)


def reference_page() -> str:
    """The generated part of the configuration reference: the pipeline job, then the comparison job."""
    from smoltune.config import CompareConfig, PipelineConfig

    documented: dict[type[BaseModel], str] = {}
    return "\n".join(
        [
            "## The pipeline job (`PipelineConfig`)",
            "",
            "A job file (`configs/default.yaml`), `--set`, and the Prefect deployment's `config` parameter all "
            "use these names.",
            "",
            config_reference(PipelineConfig, level=3, documented=documented),
            "## The comparison job (`CompareConfig`)",
            "",
            "`smoltune compare --config configs/compare.yaml`. In the YAML file the `pipeline` sections sit at the "
            "top level, beside `variants`.",
            "",
            config_reference(CompareConfig, level=3, documented=documented),
        ]
    )


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs hook: fill the marker of the configuration reference page."""
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"{PAGE} lost its marker {MARKER!r}; the generated reference has nowhere to go")
    return markdown.replace(MARKER, reference_page())


if __name__ == "__main__":
    print(reference_page())
