"""Per-stage code versions: a stage's cache key covers exactly the code it runs.

    python -m smoltune.pipeline.versions tasks.validate      # the files and libraries of one stage

Prefect's TASK_SOURCE hashes only a task's own function, and hashing the whole package would retrain on
every edit of the report. So each stage's version is computed from its task module's import closure, read
from the source with `ast` (imports inside functions count too): every project module it reaches
(`smoltune`, `tasks`, `data_checks`), plus the installed versions of the numeric libraries those modules
import (and the ones those pull in under the hood, e.g. tokenizers under transformers).

A file is versioned by its normalised syntax tree, not its text: comments, blank lines, formatting,
docstrings and the `description=` strings of pydantic fields and Prefect artifacts never change what a stage
computes, so editing them reruns nothing; any change to code does.

Modules of `smoltune.pipeline` count with their own source but are not followed further: they are the
cache's machinery and look into every stage (to probe a URL, say), which must not make every stage depend on
every other stage's code. `smoltune.config` and `smoltune.records` are not code a stage runs but the shapes of
the values it is given and hands on: a changed default reaches exactly the stages whose settings (in their
keys) it changes, and a record that no longer parses is recomputed (smoltune.pipeline.cache).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import sys
from functools import cache
from importlib import metadata
from pathlib import Path

PROJECT_PACKAGES = ("smoltune", "tasks", "data_checks", "flows")
NOT_FOLLOWED = "smoltune.pipeline"
VALUES_NOT_CODE = ("smoltune.config", "smoltune.records")
# Import name -> distribution: the libraries whose upgrade can change a stage's output.
TRACKED_LIBRARIES = {
    "torch": "torch",
    "transformers": "transformers",
    "tokenizers": "tokenizers",
    "peft": "peft",
    "trl": "trl",
    "unsloth": "unsloth",
    "unsloth_zoo": "unsloth_zoo",
    "datasets": "datasets",
    "great_expectations": "great_expectations",
    "pandas": "pandas",
    "pyarrow": "pyarrow",
    "gguf": "gguf",
    "safetensors": "safetensors",
    "accelerate": "accelerate",
    "huggingface_hub": "huggingface_hub",
    "bitsandbytes": "bitsandbytes",
}
# Libraries a tracked library runs on the stage's behalf without the stage importing them.
IMPLIED = {
    "transformers": ("tokenizers", "safetensors", "huggingface_hub", "accelerate"),
    "trl": ("accelerate", "datasets"),
    "peft": ("accelerate",),
    "unsloth": ("unsloth_zoo",),
}


def _is_project(name: str) -> bool:
    return name.split(".")[0] in PROJECT_PACKAGES


@cache
def _package_root(top: str) -> Path | None:
    spec = importlib.util.find_spec(top)  # top-level packages only: their __init__ files are light
    return Path(spec.origin).parent if spec and spec.origin else None


def module_file(name: str) -> Path | None:
    """The source file of a project module, or None when `name` is not a module (e.g. a function).

    Found on disk, never by importing: importing `smoltune.train.backend_unsloth` to look at it would load
    Unsloth, which patches trl for the whole process."""
    top, _, rest = name.partition(".")
    root = _package_root(top)
    if root is None:
        return None
    base = root.joinpath(*rest.split(".")) if rest else root
    if rest and base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return base / "__init__.py" if (base / "__init__.py").is_file() else None


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Every module name `source` imports, at any depth of the file (relative imports resolved)."""
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            # `from pkg import mod` imports a module; `from mod import func` does not (filtered later).
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in names if n}


def _source_bytes(path: Path) -> bytes:
    """A file's source as it is on disk (a seam for tests that simulate an edit)."""
    return path.read_bytes()


def _without_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return body[1:] or [ast.Pass()]
    return body


def _describes(call: ast.Call) -> bool:
    """A call whose `description=` is documentation: pydantic's `Field` (the UI's help text) and Prefect's
    `create_*_artifact` (the artifact's caption). Elsewhere a description may be data a stage writes."""
    name = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")
    return name == "Field" or (name.startswith("create_") and name.endswith("_artifact"))


def normalised_code(source: bytes) -> bytes:
    """What versions a file: its syntax tree without docstrings and `description=` strings. Comments and
    formatting never reach the tree; line numbers are left out of the dump."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            node.body = _without_docstring(node.body)
        elif isinstance(node, ast.Call) and _describes(node):
            node.keywords = [
                k for k in node.keywords if not (k.arg == "description" and isinstance(k.value, ast.Constant))
            ]
    return ast.dump(tree, include_attributes=False).encode()


def closure(entry: str) -> tuple[dict[str, Path], set[str]]:
    """({module: file} of the project modules `entry` reaches, {top-level names of other imports})."""
    files: dict[str, Path] = {}
    external: set[str] = set()
    pending = [entry]
    while pending:
        name = pending.pop()
        if name in files:
            continue
        path = module_file(name)
        if path is None or name in VALUES_NOT_CODE:
            continue
        files[name] = path
        parent = name.rpartition(".")[0]
        if parent:
            pending.append(parent)  # a package's __init__ runs before its modules
        if name.startswith(NOT_FOLLOWED + ".") or name == NOT_FOLLOWED:
            continue
        for imported in imported_names(_source_bytes(path).decode(), name, path.name == "__init__.py"):
            if _is_project(imported):
                pending.append(imported)
            else:
                external.add(imported.split(".")[0])
    return files, external


def _installed(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def libraries(imported: set[str]) -> dict[str, str]:
    """{distribution: installed version} of the tracked libraries among `imported`, with what they imply."""
    names = {n for n in imported if n in TRACKED_LIBRARIES}
    names |= {implied for n in list(names) for implied in IMPLIED.get(n, ())}
    return {TRACKED_LIBRARIES[n]: _installed(TRACKED_LIBRARIES[n]) for n in sorted(names)}


@cache
def stage_code(entry: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...], str]:
    """(project files, (library, version) pairs, digest) of the stage whose task lives in module `entry`."""
    files, external = closure(entry)
    root = Path(__file__).resolve().parents[3]  # the repository (or site-packages) holding the packages
    digest = hashlib.sha256(f"python {sys.version_info[:2]}".encode())
    names = []
    for name in sorted(files):
        path = files[name]
        shown = path.resolve().relative_to(root).as_posix() if path.resolve().is_relative_to(root) else name
        names.append(shown)
        digest.update(name.encode() + b"\0" + hashlib.sha256(normalised_code(_source_bytes(path))).digest())
    libs = libraries(external)
    digest.update(repr(sorted(libs.items())).encode())
    return tuple(names), tuple(sorted(libs.items())), digest.hexdigest()[:16]


def stage_code_version(entry: str) -> str:
    return stage_code(entry)[2]


if __name__ == "__main__":
    for module in sys.argv[1:]:
        shown_files, libs, version = stage_code(module)
        print(f"{module}: {version}")
        print("  files:", *shown_files, sep="\n    ")
        print("  libraries:", *(f"{n}=={v}" for n, v in libs), sep="\n    ")
