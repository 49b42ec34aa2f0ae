"""lm-evaluation-harness task files read without the harness: which tasks a folder defines, the data files they
name, what is wrong with them, and their content for the evaluate stage's cache key.

    python -c "from smoltune.harness_files import defined_tasks; print(defined_tasks('configs/harness'))"

Importing lm_eval and indexing its 14,000 built-in task YAMLs takes tens of seconds, so the checks made when a
job is loaded (before training) read the user's own folder with PyYAML only; names not defined there are the
harness's own, checked by the harness itself at the evaluate stage (smoltune.evaluate.harness).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import yaml

from smoltune.files import sha256_file

HARNESS_METRIC_PREFIX = "harness:"
# The harness's result keys are "metric,filter"; a task without a filter_list reports the filter "none".
NO_FILTER = "none"
# Written by Python when a task's `!function` helper module is imported: not part of what the task is.
_NOT_CONTENT = ("__pycache__",)


class _TaskLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also accepts the harness's `!function module.name` tag, read as its text:
    here a task file is only inspected, never run (the harness's own loader imports the named module)."""


_TaskLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def task_yamls(include_path: str | Path) -> list[Path]:
    """Every task YAML under `include_path`, in a stable order (the harness reads .yaml and .yml)."""
    root = Path(include_path)
    return sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def read_task_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A task YAML with the files it `include`s merged under it (its own keys win), as the harness merges them.
    Raises ValueError with a one-line reason for a file that is not a YAML mapping."""
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskLoader)  # noqa: S506 - a safe loader
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = " ".join(str(err).split())[:200]
        raise ValueError(f"{path} is not readable YAML ({first}); fix the file") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a YAML mapping of task settings")
    include = doc.pop("include", None)
    if isinstance(include, str) and path not in seen:
        base = read_task_yaml((path.parent / include).resolve(), (*seen, path))
        doc = {**base, **doc}
    return doc


def task_names(doc: dict[str, Any]) -> list[str]:
    """The names a task YAML defines: its task, or a group's name, and its tags."""
    task, group, tags = doc.get("task"), doc.get("group"), doc.get("tag")
    names = [task] if isinstance(task, str) else [group] if isinstance(group, str) else []
    names += [tags] if isinstance(tags, str) else [t for t in tags or [] if isinstance(t, str)]
    return names


def data_files(doc: dict[str, Any]) -> list[str]:
    """The data files a task reads (`dataset_kwargs.data_files`: a path, a list, or a split -> path(s) map)."""
    named = (doc.get("dataset_kwargs") or {}).get("data_files") if isinstance(doc.get("dataset_kwargs"), dict) else None
    values = list(named.values()) if isinstance(named, dict) else [named]
    flat = [v for value in values for v in (value if isinstance(value, list) else [value])]
    return [str(v) for v in flat if v]


def metric_names(doc: dict[str, Any]) -> list[str]:
    """The metrics a task YAML lists (empty when it relies on the harness's defaults for its output type)."""
    return [
        m["metric"] for m in doc.get("metric_list") or [] if isinstance(m, dict) and isinstance(m.get("metric"), str)
    ]


def defined_tasks(include_path: str | Path) -> dict[str, dict[str, Any]]:
    """Name -> task YAML (includes merged) for every task, group and tag defined under `include_path`.
    Raises ValueError naming the first file that cannot be read."""
    found: dict[str, dict[str, Any]] = {}
    for path in task_yamls(include_path):
        doc = read_task_yaml(path)
        for name in task_names(doc):
            found.setdefault(name, {**doc, "__file__": str(path)})
    return found


def builtin_mentions(names: set[str]) -> set[str]:
    """Those of `names` that occur as a word in the harness's own task YAMLs (read as text, about 2 s; parsing
    them is what takes the harness tens of seconds). Every built-in task, group and tag is named in one of those
    files, so a name that occurs in none of them is not the harness's."""
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return set()
    patterns = {n: re.compile(rf"(?<![\w-]){re.escape(n)}(?![\w-])") for n in names}
    found: set[str] = set()
    for path in Path(spec.submodule_search_locations[0], "tasks").rglob("*.yaml"):
        text = path.read_text(encoding="utf-8", errors="replace")
        found |= {n for n, pattern in patterns.items() if n not in found and pattern.search(text)}
        if found == names:
            break
    return found


def parse_metric(metric: str) -> tuple[str, str, str] | None:
    """'harness:TASK/METRIC[,FILTER]' -> (task, metric, filter); None for any other promotion metric."""
    if not metric.startswith(HARNESS_METRIC_PREFIX):
        return None
    task, _, name = metric[len(HARNESS_METRIC_PREFIX) :].partition("/")
    name, _, filter_name = name.partition(",")
    return task, name, filter_name or NO_FILTER


def harness_problems(harness: Any, metric: str = "auto") -> list[str]:
    """What keeps `eval.harness` (a HarnessConfig or None) and a harness `eval.metric` from running, found from
    the task files alone: a missing folder, a broken YAML, a task name neither defined under include_path nor the
    harness's own, a data file that is not there, a promotion metric the task does not list."""
    wanted = parse_metric(metric)
    if harness is None:
        return [f"eval.metric: {metric} needs eval.harness with that task"] if wanted else []
    problems: list[str] = []
    defined: dict[str, dict[str, Any]] = {}
    if harness.include_path is not None:
        if not Path(harness.include_path).is_dir():
            return [f"eval.harness.include_path: {harness.include_path} is not a folder of task YAMLs"]
        try:
            defined = defined_tasks(harness.include_path)
        except ValueError as err:
            return [f"eval.harness.include_path: {err}"]
    elsewhere = set(harness.tasks) - set(defined)
    for name in sorted(elsewhere - builtin_mentions(elsewhere)) if elsewhere else []:
        problems.append(
            f"eval.harness.tasks: {name} is not a task of the harness nor defined under include_path "
            f"{harness.include_path} (which defines {sorted(defined) or 'none'}); fix the name or the folder"
        )
    for name in harness.tasks:
        for file in data_files(defined.get(name, {})):
            if not Path(file).expanduser().is_file():
                problems.append(
                    f"eval.harness: task {name} ({defined[name]['__file__']}) reads {file}, which does not exist "
                    f"(relative paths are read from {Path.cwd()}); fix its dataset_kwargs.data_files"
                )
    if wanted:
        task, name, _ = wanted
        listed = metric_names(defined.get(task, {}))
        if task not in harness.tasks:
            problems.append(f"eval.metric: {task} is not among eval.harness.tasks {harness.tasks}")
        elif listed and name not in listed:
            problems.append(f"eval.metric: task {task} reports {listed}, not {name}")
    return problems


def harness_identity(harness: Any) -> dict[str, Any] | None:
    """What the harness part of the evaluate stage's key covers besides its settings: the content of every file
    under include_path (task YAMLs, their `!function` helpers, data kept beside them), of every data file a
    requested task names, wherever it is, and the harness's version."""
    if harness is None:
        return None
    files: dict[str, str] = {}
    if harness.include_path and Path(harness.include_path).is_dir():
        root = Path(harness.include_path)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if not set(_NOT_CONTENT) & set(path.relative_to(root).parts):
                files[path.relative_to(root).as_posix()] = sha256_file(path)
        try:
            defined = defined_tasks(root)
        except ValueError:
            defined = {}  # the stage reports the broken file; the key still covers its bytes
        for name in harness.tasks:
            for data in data_files(defined.get(name, {})):
                path = Path(data).expanduser()
                files[f"data:{data}"] = sha256_file(path) if path.is_file() else "missing"
    digest = hashlib.sha256("\n".join(f"{k} {v}" for k, v in sorted(files.items())).encode()).hexdigest()
    # The harness's version: the stage's code version lists the numeric libraries it imports, not lm-eval.
    return {"files": len(files), "content": digest, "lm_eval": _installed_version("lm-eval")}


def _installed_version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
