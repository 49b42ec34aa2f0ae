"""EleutherAI lm-evaluation-harness tasks on the base and the tuned model (`eval.harness`).

    python -m smoltune.evaluate.harness SPEC.json RESULT.json     # what the evaluate stage starts

The models are loaded the way the harness's own `hf` model loads them (`pretrained=`, a LoRA adapter as
`peft=<adapter dir>`, a full fine-tune as `pretrained=<tuned folder>`) in the training's precision (`dtype=`), so
`HarnessFigures.commands` reproduce the figures with the `lm_eval` CLI. The harness runs in a child process:
HF_HUB_OFFLINE / HF_DATASETS_OFFLINE only take effect when set before `datasets` and `huggingface_hub` are
imported, the harness seeds Python's, NumPy's and torch's global generators, and the flow's process may have
imported Unsloth, which patches the Llama classes process-wide. The base's run (`measure_harness_base`) and the
tuned model's (`measure_harness`) are separate runs: the pipeline caches the base's apart from any adapter.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from smoltune.config import HarnessConfig
from smoltune.errors import ConfigError, ModelError
from smoltune.files import atomic_write_json
from smoltune.harness_files import NO_FILTER, defined_tasks
from smoltune.records import HarnessFigures, HarnessScore, TrainResult
from smoltune.train.precision import DTYPES

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # transformers 5 follows HF_HUB_OFFLINE
_TASK_PROBLEM = 3  # the child's exit code when a task cannot be loaded (its message is in the result file)


def base_args(model_path: str, precision: str, trust_remote_code: bool = False) -> dict[str, Any]:
    """The `hf` model's arguments for the base model."""
    base: dict[str, Any] = {"pretrained": model_path, "dtype": DTYPES[precision]}
    if trust_remote_code:
        base["trust_remote_code"] = True
    return base


def model_args(
    model_path: str, output_dir: str, mode: str, precision: str, trust_remote_code: bool = False
) -> dict[str, dict[str, Any]]:
    """The `hf` model's arguments for the base and the tuned model."""
    base = base_args(model_path, precision, trust_remote_code)
    tuned = {**base, "peft": output_dir} if mode == "lora" else {**base, "pretrained": output_dir}
    return {"base": base, "tuned": tuned}


def measure_harness_base(
    harness: HarnessConfig, model_path: str, precision: str, trust_remote_code: bool, work_dir: Path
) -> dict[str, Any]:
    """The harness on the base model alone, in the training's precision (`harness_run`'s raw run): the
    evaluate_base stage caches it, so a new adapter never runs the harness on the base again."""
    from smoltune.model import pick_device

    models = {"base": base_args(model_path, precision, trust_remote_code)}
    return harness_run(harness, models, pick_device(), work_dir)


def measure_harness(
    harness: HarnessConfig,
    model_path: str,
    trained: TrainResult,
    trust_remote_code: bool,
    work_dir: Path,
    base_run: dict[str, Any],
) -> HarnessFigures:
    """The harness on what `trained` produced, in its precision, on this machine's device, beside the base's
    run (`measure_harness_base`)."""
    from smoltune.model import pick_device

    args = model_args(model_path, trained.output_dir, trained.mode, trained.precision, trust_remote_code)
    return harness_figures(harness, base_run, harness_run(harness, {"tuned": args["tuned"]}, pick_device(), work_dir))


def lm_eval_command(args: dict[str, Any], harness: HarnessConfig, device: str) -> str:
    """The `lm_eval` command line that measures what `run_harness` measures for one model."""
    words = ["lm_eval", "run", "--model", "hf", "--model_args", ",".join(f"{k}={v}" for k, v in args.items())]
    words += ["--tasks", ",".join(harness.tasks), "--batch_size", str(harness.batch_size), "--device", device]
    if harness.include_path:
        words += ["--include_path", harness.include_path]
    if harness.limit is not None:
        words += ["--limit", str(harness.limit)]
    if harness.num_fewshot is not None:
        words += ["--num_fewshot", str(harness.num_fewshot)]
    return " ".join([*(f"{k}={v}" for k, v in OFFLINE.items()), *map(shlex.quote, words)])


def harness_run(
    harness: HarnessConfig, models: dict[str, dict[str, Any]], device: str, work_dir: Path
) -> dict[str, Any]:
    """The harness's raw results for each of `models` (label -> `hf` arguments), measured in a child process,
    with the command that reproduces each, the harness's version and the wall time (JSON-serialisable); the
    child's own output stays in `work_dir/harness.json`. A task that cannot be loaded (unknown name, broken YAML,
    missing data file) is a ConfigError."""
    started = time.perf_counter()
    spec = {"harness": harness.model_dump(mode="json"), "models": models, "device": device}
    spec_file = atomic_write_json(work_dir / "harness_spec.json", spec)
    result_file = work_dir / "harness.json"
    result_file.unlink(missing_ok=True)  # only what this child writes is read back
    # The harness's progress bars and logs go to stderr (file descriptor 2, whatever object sys.stderr is now),
    # where the stage's own progress is; stdout stays the CLI's.
    done = subprocess.run(
        [sys.executable, "-m", "smoltune.evaluate.harness", str(spec_file), str(result_file)],
        env={**os.environ, **OFFLINE},
        stdout=2,
        check=False,
    )
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if done.returncode == _TASK_PROBLEM and "error" in result:
        raise ConfigError([result["error"]], "eval.harness")
    if done.returncode != 0:
        raise ModelError(
            f"lm-evaluation-harness failed on this model (exit {done.returncode}); its output is above. Training is "
            "saved: fix the cause and rerun (only evaluation runs again)"
        )
    return {
        "results": {label: result[label] for label in models},
        "commands": {label: lm_eval_command(args, harness, device) for label, args in models.items()},
        "lm_eval_version": result["lm_eval_version"],
        "seconds": round(time.perf_counter() - started, 2),
    }


def harness_figures(harness: HarnessConfig, *runs: dict[str, Any]) -> HarnessFigures:
    """The figures of `harness_run` runs that measured, between them, "base" and "tuned". Pure."""
    results = {label: raw for run in runs for label, raw in run["results"].items()}
    return HarnessFigures(
        tasks=harness.tasks,
        scores=harness_scores(results["base"], results["tuned"]),
        limit=harness.limit,
        num_fewshot=harness.num_fewshot,
        seconds=round(sum(run["seconds"] for run in runs), 2),
        lm_eval_version=runs[-1]["lm_eval_version"],
        commands={label: command for run in runs for label, command in run["commands"].items()},
    )


def run_harness(
    harness: HarnessConfig, models: dict[str, dict[str, Any]], device: str, work_dir: Path
) -> HarnessFigures:
    """Every metric of `harness.tasks` for base and tuned (`models`), measured in one child process."""
    return harness_figures(harness, harness_run(harness, models, device, work_dir))


def _number(value: Any) -> float | None:
    """A figure as a float; the harness writes "N/A" for a standard error it cannot compute."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def harness_scores(base: dict[str, Any], tuned: dict[str, Any]) -> list[HarnessScore]:
    """One score per (task, metric, filter) of the harness's results, base beside tuned. Pure."""
    scores = []
    for task, metrics in tuned["results"].items():
        for key, value in metrics.items():
            name, comma, filter_name = key.partition(",")
            if not comma or name.endswith("_stderr"):
                continue  # "alias", "name", "sample_len" and the standard errors (read below)
            stderr = f"{name}_stderr,{filter_name}"
            samples = tuned.get("n-samples", {}).get(task, {}).get("effective")
            scores.append(
                HarnessScore(
                    task=task,
                    metric=name if filter_name == NO_FILTER else f"{name},{filter_name}",
                    higher_is_better=tuned.get("higher_is_better", {}).get(task, {}).get(name),
                    base=_number(base["results"].get(task, {}).get(key)),
                    tuned=_number(value),
                    base_stderr=_number(base["results"].get(task, {}).get(stderr)),
                    tuned_stderr=_number(metrics.get(stderr)),
                    samples=samples,
                )
            )
    return scores


def task_manager(harness: dict[str, Any]) -> Any:
    """The harness's TaskManager over include_path; its 14,000 built-in tasks are indexed (tens of seconds) only
    when the job names a task that include_path does not define."""
    from lm_eval.tasks import TaskManager

    include = harness["include_path"]
    local = set(defined_tasks(include)) if include else set()
    return TaskManager(include_path=include, include_defaults=not set(harness["tasks"]) <= local)


def load_problem(manager: Any, tasks: list[str]) -> str | None:
    """Why the harness cannot load `tasks` (an unknown name, a broken task file, a data file it cannot read),
    in one line; None when they load."""
    import datasets

    unknown = [t for t in tasks if t not in manager.task_index]
    if unknown:
        local = sorted(manager.all_tasks)[:20]
        return f"unknown task(s) {unknown}; known here: {local}; check eval.harness.tasks and include_path"
    try:
        manager.load(tasks)  # builds each task and reads its data: what simple_evaluate does first
    except (OSError, ValueError, KeyError, TypeError, ImportError, datasets.exceptions.DatasetNotFoundError) as err:
        reason = " ".join(str(err).split())[:300]
        return f"task(s) {tasks} cannot be loaded: {type(err).__name__}: {reason}; fix the task YAML or its data"
    return None


def evaluate_models(spec: dict[str, Any]) -> dict[str, Any]:
    """The child's work: the harness on each model of `spec`, results as the harness reports them."""
    import lm_eval
    from lm_eval import simple_evaluate

    harness = spec["harness"]
    try:
        manager = task_manager(harness)
    except ValueError as err:  # smoltune.harness_files: a task YAML that is not a mapping
        return {"error": str(err)}
    problem = load_problem(manager, harness["tasks"])
    if problem:
        return {"error": problem}
    results: dict[str, Any] = {"lm_eval_version": lm_eval.__version__}
    for label, args in spec["models"].items():
        got = simple_evaluate(
            model="hf",
            model_args=args,
            tasks=harness["tasks"],
            task_manager=manager,
            num_fewshot=harness["num_fewshot"],
            limit=harness["limit"],
            batch_size=harness["batch_size"],
            device=spec["device"],
            log_samples=False,
        )
        results[label] = {key: got[key] for key in ("results", "higher_is_better", "n-samples", "n-shot", "versions")}
    return results


def main(argv: list[str]) -> int:
    spec_file, result_file = argv
    result = evaluate_models(json.loads(Path(spec_file).read_text()))
    atomic_write_json(result_file, result)
    return _TASK_PROBLEM if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
