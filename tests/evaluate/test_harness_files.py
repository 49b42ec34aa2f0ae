"""eval.harness without running the harness: config checks (one line per problem, before training), the cache keys
of the evaluate_base and evaluate stages over the task files' content, promotion by a harness metric, the report's
table, and the shipped example task's data."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from smoltune.config import load_config
from smoltune.errors import ConfigError
from smoltune.evaluate.harness import harness_scores, lm_eval_command, model_args
from smoltune.evaluate.harness_example import EXAMPLE_DATA, example_rows
from smoltune.files import read_jsonl
from smoltune.pipeline.keys import evaluate_base_parts, evaluate_parts
from smoltune.pipeline.registry import promotion_metric
from smoltune.records import EvalFigures, HarnessFigures
from smoltune.report.markdown import _harness_section, render_report
from tests.evaluate.harness_tasks import write_task_folder
from tests.report.test_report import make_summary

KeyParts = Callable[[object], dict]


def harness_config(folder: Path, *more: str):
    return load_config(None, [f"eval.harness.include_path={folder}", "eval.harness.tasks=[tiny_gen, tiny_mc]", *more])


@pytest.fixture(params=[evaluate_base_parts, evaluate_parts], ids=["evaluate_base", "evaluate"])
def key_parts(request: pytest.FixtureRequest, tmp_path: Path) -> KeyParts:
    """The key of the stage that runs the harness on the base, or of the one that runs it on the tuned model."""
    base_file = tmp_path / "base.json"
    base_file.write_text('{"loss": 1.0}')
    records = {
        "model": SimpleNamespace(sha256="m"),
        "trained": SimpleNamespace(key="t", result=SimpleNamespace(precision="fp32", device="cpu")),
        "base": SimpleNamespace(key="b", base_file=str(base_file)),
        "prepared": SimpleNamespace(eval_sha256="e"),
    }
    return lambda config: request.param({"cache_dir": "c", "config": config, **records})[1]


def test_key_follows_task_file_content_not_names_or_times(tmp_path: Path, key_parts: KeyParts) -> None:
    folder = write_task_folder(tmp_path / "tasks")
    config = harness_config(folder)
    first = key_parts(config)
    yaml_file = folder / "tiny_gen.yaml"
    yaml_file.write_text(yaml_file.read_text())  # rewritten, same bytes: a new mtime only
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "utils.cpython-311.pyc").write_bytes(b"\0")  # the harness importing a helper
    assert key_parts(harness_config(folder)) == first
    yaml_file.write_text(yaml_file.read_text().replace("max_gen_toks: 4", "max_gen_toks: 5"))
    changed = key_parts(harness_config(folder))
    assert changed["harness"] != first["harness"]
    yaml_file.write_text(yaml_file.read_text().replace("max_gen_toks: 5", "max_gen_toks: 4"))
    assert key_parts(harness_config(folder)) == first
    (folder / "rows.jsonl").write_text('{"q": "What is 1 plus 1?", "a": "2", "choices": ["2"], "gold": 0}\n')
    assert key_parts(harness_config(folder))["harness"] != first["harness"]


def test_key_covers_a_data_file_outside_the_folder_and_the_settings_but_not_the_metric(
    tmp_path: Path, key_parts: KeyParts
) -> None:
    folder = write_task_folder(tmp_path / "tasks")
    outside = tmp_path / "elsewhere.jsonl"
    (folder / "rows.jsonl").rename(outside)
    for name in ("tiny_gen.yaml", "tiny_mc.yaml"):
        (folder / name).write_text((folder / name).read_text().replace(str(folder / "rows.jsonl"), str(outside)))
    first = key_parts(harness_config(folder))
    outside.write_text(outside.read_text() + '{"q": "x", "a": "y", "choices": ["y"], "gold": 0}\n')
    assert key_parts(harness_config(folder))["harness"] != first["harness"]
    assert key_parts(harness_config(folder, "eval.harness.limit=3"))["eval"] != first["eval"]
    by_metric = harness_config(folder, "eval.metric=harness:tiny_mc/acc")
    assert key_parts(by_metric)["eval"] == key_parts(harness_config(folder))["eval"]


def problems_of(*overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(None, list(overrides))
    assert "Traceback" not in str(caught.value)
    return caught.value.problems


def test_unknown_task_names_fail_before_training(tmp_path: Path) -> None:
    folder = write_task_folder(tmp_path / "tasks")
    problems = problems_of(f"eval.harness.include_path={folder}", "eval.harness.tasks=[tiny_gen, tiny_gne]")
    assert len(problems) == 1 and "tiny_gne" in problems[0] and "tiny_gen" in problems[0]
    # The harness's own tasks are accepted without importing it.
    assert harness_config(folder, "eval.harness.tasks=[tiny_gen, hellaswag]").eval.harness.tasks[1] == "hellaswag"


def test_broken_yaml_and_missing_data_file_are_config_errors(tmp_path: Path) -> None:
    folder = write_task_folder(tmp_path / "tasks")
    (folder / "rows.jsonl").unlink()
    problems = problems_of(f"eval.harness.include_path={folder}", "eval.harness.tasks=[tiny_gen, tiny_mc]")
    assert len(problems) == 2 and all("rows.jsonl" in p and "does not exist" in p for p in problems)
    (folder / "broken.yaml").write_text("task: [unclosed\n")
    (problem,) = problems_of(f"eval.harness.include_path={folder}", "eval.harness.tasks=[tiny_gen]")
    assert "broken.yaml" in problem and "not readable YAML" in problem and "\n" not in problem
    (problem,) = problems_of(f"eval.harness.include_path={tmp_path / 'nowhere'}", "eval.harness.tasks=[x]")
    assert "is not a folder" in problem


def test_a_promotion_metric_must_be_a_harness_task_and_metric(tmp_path: Path) -> None:
    folder = write_task_folder(tmp_path / "tasks")
    assert problems_of("eval.metric=harness:tiny_mc/acc") == [
        "eval.metric: harness:tiny_mc/acc needs eval.harness with that task"
    ]
    base = [f"eval.harness.include_path={folder}", "eval.harness.tasks=[tiny_gen, tiny_mc]"]
    (problem,) = problems_of(*base, "eval.metric=harness:tiny_mc/f1")
    assert "acc" in problem and "f1" in problem
    (problem,) = problems_of(*base, "eval.metric=harness:other/acc")
    assert "not among eval.harness.tasks" in problem
    assert problems_of("eval.metric=accuracy")[0].startswith("eval.metric: String should match pattern")


# What lm-evaluation-harness 0.4.13's simple_evaluate returns, cut to the keys smoltune reads.
RAW_BASE = {
    "results": {"tiny_mc": {"alias": "tiny_mc", "acc,none": 0.25, "acc_stderr,none": 0.25}},
    "higher_is_better": {"tiny_mc": {"acc": True}},
    "n-samples": {"tiny_mc": {"original": 6, "effective": 4}},
}
RAW_TUNED = {
    "results": {
        "tiny_mc": {"alias": "tiny_mc", "acc,none": 0.75, "acc_stderr,none": 0.25},
        "tiny_gen": {"alias": "tiny_gen", "exact_match,strict": 0.5, "exact_match_stderr,strict": "N/A"},
    },
    "higher_is_better": {"tiny_mc": {"acc": True}, "tiny_gen": {"exact_match": True}},
    "n-samples": {"tiny_mc": {"original": 6, "effective": 4}},
}


def figures_with_harness() -> EvalFigures:
    harness = HarnessFigures(
        tasks=["tiny_mc", "tiny_gen"], scores=harness_scores(RAW_BASE, RAW_TUNED), limit=4, seconds=1.0,
        lm_eval_version="0.4.13", commands={"tuned": "lm_eval --model hf --tasks tiny_mc"},
    )  # fmt: skip
    return EvalFigures(
        eval_rows=4, eval_loss_base=2.0, eval_loss_tuned=1.0, perplexity_base=7.4, perplexity_tuned=2.7,
        checked_rows=4, accuracy_base=0.1, accuracy_tuned=0.2, harness=harness,
    )  # fmt: skip


def test_scores_keep_every_metric_with_stderr_and_direction() -> None:
    harness = figures_with_harness().harness
    acc = harness.score("tiny_mc", "acc")
    assert (acc.base, acc.tuned, acc.base_stderr, acc.tuned_stderr, acc.samples) == (0.25, 0.75, 0.25, 0.25, 4)
    gen = harness.score("tiny_gen", "exact_match,strict")
    assert gen.base is None and gen.tuned == 0.5 and gen.tuned_stderr is None and gen.higher_is_better is True


def test_promotion_by_a_harness_metric() -> None:
    figures = figures_with_harness()
    assert promotion_metric(figures) == ("accuracy_tuned", 0.2, True)
    assert promotion_metric(figures, "harness:tiny_mc/acc") == ("harness:tiny_mc/acc", 0.75, True)
    assert promotion_metric(figures, "harness:tiny_gen/exact_match,strict")[1] == 0.5
    with pytest.raises(ConfigError, match="harness:tiny_mc/acc"):
        promotion_metric(figures, "harness:tiny_mc/f1")


def test_report_shows_base_vs_tuned_with_standard_errors_and_the_command() -> None:
    text = _harness_section(figures_with_harness().model_dump(mode="json"))
    assert "| tiny_mc | acc ↑ | 0.2500 | ± 0.2500 | 0.7500 | ± 0.2500 | 4 |" in text
    assert "| tiny_gen | exact_match,strict ↑ | — | — | 0.5000 | — | — |" in text
    assert "lm_eval --model hf --tasks tiny_mc" in text
    assert _harness_section({}) == ""
    summary = make_summary()
    summary["eval"] = figures_with_harness().model_dump(mode="json")
    report = render_report(summary, [])
    assert "## lm-evaluation-harness" in report and text in report
    assert "## lm-evaluation-harness" not in render_report(make_summary(), [])


def test_models_load_as_the_harness_loads_them() -> None:
    lora = model_args("/base", "/adapter", "lora", "bf16")
    assert lora == {
        "base": {"pretrained": "/base", "dtype": "bfloat16"},
        "tuned": {"pretrained": "/base", "dtype": "bfloat16", "peft": "/adapter"},
    }
    full = model_args("/base", "/tuned", "full", "fp32")
    assert full["tuned"] == {"pretrained": "/tuned", "dtype": "float32"}
    harness = harness_config(Path("configs/harness"), "eval.harness.tasks=[smoltune_heldout]").eval.harness
    command = lm_eval_command(lora["tuned"], harness, "cpu")
    assert command.startswith("HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1")
    assert "--model_args pretrained=/base,dtype=bfloat16,peft=/adapter --tasks smoltune_heldout" in command


def test_shipped_example_holds_the_default_jobs_held_out_rows() -> None:
    """configs/harness/smoltune_heldout.jsonl is what smoltune.evaluate.harness_example generates now, and none of
    its questions is among the default job's training rows."""
    assert read_jsonl(EXAMPLE_DATA) == example_rows()
    from smoltune.config import DataConfig
    from smoltune.data.split import row_key, split_rows
    from smoltune.data.stage import load_rows

    data = DataConfig()
    train, _ = split_rows(load_rows(data), data.num_samples, data.eval_samples, data.seed)
    assert not {row_key(r) for r in train} & {row_key(r) for r in read_jsonl(EXAMPLE_DATA)}
    config = load_config("configs/default.yaml", ["eval.harness.include_path=configs/harness",
                                                   "eval.harness.tasks=[smoltune_heldout]",
                                                   "eval.metric=harness:smoltune_heldout/exact_match"])  # fmt: skip
    assert config.eval.harness.include_path == str(Path("configs/harness").resolve())
    assert json.loads(config.model_dump_json())["eval"]["metric"] == "harness:smoltune_heldout/exact_match"


def test_shipped_example_task_loads_and_scores_in_the_harness() -> None:
    """configs/harness/smoltune_heldout.yaml as the harness itself reads it (from the repository root, as the
    README's lm_eval command runs): its 67 rows, its prompt, and exact match up to surrounding whitespace."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path="configs/harness", include_defaults=False)
    task = manager.load(["smoltune_heldout"])["tasks"]["smoltune_heldout"]
    docs = list(task.test_docs())
    assert len(docs) == len(read_jsonl(EXAMPLE_DATA)) == 67
    assert task.doc_to_text(docs[0]) == docs[0]["prompt"] and task.doc_to_target(docs[0]) == docs[0]["output"]
    answer = docs[0]["output"]
    assert task.process_results(docs[0], [f" {answer} "])["exact_match"] == 1.0
    assert task.process_results(docs[0], [f"{answer}!"])["exact_match"] == 0.0
