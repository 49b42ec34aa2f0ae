"""Per-stage caching: unchanged reruns are Cached; each kind of change (data content, a URL's content, eval
prompts, a setting, a module of one stage, `data_checks/`, a library version, a deleted output) reruns exactly
the stages it affects; a stage folder with a missing output is rebuilt, never reported."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from smoltune.config import load_config
from smoltune.data.builtin import generate_rows
from smoltune.pipeline import versions
from smoltune.pipeline.cache import COMPLETE, Stage, complete_token, run_stage
from smoltune.records import Prepared, StageRecord
from tests.conftest import REPO
from tests.http_files import FileServer
from tests.prefect_runs import of_flow_run, task_runs
from tests.tiny_model import tiny_overrides

STAGES = ["resolve_model", "fetch_dataset", "validate_dataset", "prepare_dataset", "train", "evaluate_base", "evaluate"]
AFTER_DATA = {"fetch_dataset", "validate_dataset", "prepare_dataset", "train", "evaluate_base", "evaluate"}


class Note(StageRecord):
    file: str

    def outputs(self) -> list[str]:
        return [self.file]


def parts(inputs: dict) -> tuple[str, dict]:
    return inputs["cache_dir"], {"x": inputs["x"]}


NOTE = Stage("note", Note, parts, "tests.pipeline.test_caching")


def write_note(out: Path, calls: list[Path]) -> Note:
    calls.append(out)
    (out / "data.txt").write_text("hi")
    return Note(file=str(out / "data.txt"))


def test_run_stage_writes_once_and_marks_complete(tmp_path: Path) -> None:
    calls: list[Path] = []
    folder = NOTE.folder(cache_dir=str(tmp_path), x=1)
    first = NOTE.run(folder, lambda out: write_note(out, calls))
    assert first.file == str(folder / "data.txt") and first.key == folder.name and first.folder == str(folder)
    assert NOTE.run(folder, lambda out: write_note(out, calls)) == first and len(calls) == 1
    assert NOTE.run(folder, lambda out: write_note(out, calls), refresh=True) == first and len(calls) == 2
    assert NOTE.folder(cache_dir=str(tmp_path), x=2) != folder
    # The stored record is the typed record, read back as such: no bookkeeping keys, no path rewriting.
    assert Note.model_validate_json((folder / "record.json").read_text()) == first


def test_a_failed_stage_leaves_no_complete_folder(tmp_path: Path) -> None:
    folder = NOTE.folder(cache_dir=str(tmp_path), x=1)

    def broken(out: Path) -> Note:
        (out / "half.txt").write_text("...")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        NOTE.run(folder, broken)
    assert complete_token(folder, Note) is None
    calls: list[Path] = []
    NOTE.run(folder, lambda out: write_note(out, calls))  # the half-written folder is cleared, not trusted
    assert not (folder / "half.txt").exists() and complete_token(folder, Note) is not None


def test_cache_key_is_stable_while_the_folder_is_complete(tmp_path: Path) -> None:
    policy = NOTE.cache_policy()
    inputs = {"cache_dir": str(tmp_path), "x": 1}
    folder = NOTE.folder(**inputs)
    before = policy.compute_key(None, inputs, {})  # folder missing: a reserved token
    NOTE.run(folder, lambda out: write_note(out, []))
    assert policy.compute_key(None, inputs, {}) == before  # the run that filled it used that token
    assert policy.compute_key(None, {**inputs, "refresh": True}, {}) != before
    (folder / "data.txt").unlink()  # an output the record names is gone: a key Prefect has never seen
    assert policy.compute_key(None, inputs, {}) != before
    assert (folder / COMPLETE).is_file()


def test_a_record_of_another_shape_is_recomputed(tmp_path: Path) -> None:
    folder = tmp_path / "s" / "k"
    run_stage(folder, Note, lambda out: write_note(out, []))
    assert complete_token(folder, Prepared) is None  # written by other code: never trusted as a Prepared


def test_each_stage_versions_exactly_the_code_it_runs() -> None:
    files = {module: versions.stage_code(module)[0] for module in ("tasks.fetch", "tasks.validate", "tasks.train")}
    files |= {m: versions.stage_code(m)[0] for m in ("tasks.prepare", "tasks.evaluate", "tasks.model")}
    files["tasks.evaluate_base"] = versions.stage_code("tasks.evaluate_base")[0]
    cached = list(files.values())
    assert not any("src/smoltune/report/markdown.py" in f for f in cached)  # report edits retrain nothing
    assert [m for m, f in files.items() if "data_checks/suite.py" in f] == ["tasks.validate"]
    assert [m for m, f in files.items() if "src/smoltune/train/trainer.py" in f] == ["tasks.train"]
    assert "src/smoltune/data/sources.py" in files["tasks.fetch"]
    libraries = {m: dict(versions.stage_code(m)[1]) for m in files}
    assert {"torch", "transformers", "peft", "trl", "unsloth", "tokenizers"} <= set(libraries["tasks.train"])
    assert {"great_expectations", "pandas", "tokenizers"} <= set(libraries["tasks.validate"])
    assert "peft" not in libraries["tasks.fetch"] and "torch" not in libraries["tasks.fetch"]


def task_states(flow_run_id, expected: frozenset[str] = frozenset()) -> dict[str, str]:  # noqa: ANN001
    """Each task run's state by stage name, once the `expected` names are there (tests/prefect_runs.py)."""
    runs = task_runs(of_flow_run(flow_run_id), lambda runs: expected <= {run.name.rsplit("-", 1)[0] for run in runs})
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs}


def run(config, refresh=None) -> tuple[dict[str, str], Path, float]:  # noqa: ANN001
    from flows.finetune import finetune

    started = time.perf_counter()
    state = finetune(config=config, refresh=refresh, return_state=True)
    assert state.is_completed()
    run_dir = Path(state.result())
    assert_summary_paths_exist(run_dir)
    return task_states(state.state_details.flow_run_id), run_dir, time.perf_counter() - started


def assert_summary_paths_exist(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    for name, path in summary["artifacts"].items():
        if isinstance(path, str) and path.startswith("/"):
            assert Path(path).exists(), f"summary names {name}={path}, which does not exist"


def rerun_stages(states: dict[str, str], stages: list[str] = STAGES) -> set[str]:
    return {stage for stage in stages if states[stage] != "Cached"}


CODE_EDIT = b"\n_edited = True\n"  # a change of behaviour (a new module-level statement)


@pytest.fixture
def edit(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Simulate an edit of one project file (its bytes as versions see them), as a developer would make:
    `edit("src/smoltune/x.py")` adds code; `edit(path, change)` applies `change` to the file's bytes."""
    edited: list[tuple[str, object]] = []
    real = versions._source_bytes

    def source_bytes(path: Path) -> bytes:
        text = real(path)
        for name, change in edited:
            text = change(text) if str(path).endswith(name) else text
        return text

    monkeypatch.setattr(versions, "_source_bytes", source_bytes)

    def apply(relative: str, change=lambda text: text + CODE_EDIT) -> None:  # noqa: ANN001
        before = source_bytes(REPO / relative)
        edited.append((relative, change))
        assert source_bytes(REPO / relative) != before, f"the simulated edit of {relative} changed nothing"
        versions.stage_code.cache_clear()

    yield apply
    versions.stage_code.cache_clear()


STAGE_MODULES = (
    "tasks.model", "tasks.fetch", "tasks.validate", "tasks.prepare", "tasks.train", "tasks.evaluate_base",
    "tasks.evaluate",
)  # fmt: skip


def code_versions() -> dict[str, str]:
    return {module: versions.stage_code_version(module) for module in STAGE_MODULES}


def test_code_is_versioned_by_its_syntax_tree() -> None:
    code = (
        b'"""Doc."""\nfrom pydantic import Field\n\n\ndef f(x):\n    """Doc."""\n    return Field(x, description="d")\n'
    )
    same = (
        b'"""Other doc."""\nfrom pydantic import Field\n# a comment\n\n'
        b'def f(x):  # why\n    return Field(\n        x, description="other"\n    )\n'
    )
    assert versions.normalised_code(code) == versions.normalised_code(same)
    assert versions.normalised_code(code) != versions.normalised_code(code.replace(b"Field(x", b"Field(x + 1"))
    assert versions.normalised_code(code) != versions.normalised_code(code.replace(b"(x)", b"(y)"))


def test_what_does_not_change_behaviour_reruns_nothing(edit) -> None:  # noqa: ANN001
    before = code_versions()
    # A docstring and a field description in config.py, a comment and formatting in the training code.
    edit("src/smoltune/config.py", lambda t: t.replace(b"Typed configuration", b"Typed settings", 1))
    edit("src/smoltune/config.py", lambda t: t.replace(b'description="Peak learning rate."', b'description="Peak LR."'))
    edit("src/smoltune/train/trainer.py", lambda t: t.replace(b"\n\n\n", b"\n\n\n# a note\n\n\n", 1) + b"\n\n")
    edit("src/smoltune/files.py", lambda t: t.replace(b'"""', b'"""Reworded. ', 1))
    assert code_versions() == before
    edit("src/smoltune/train/trainer.py")  # a code change still reruns what runs it
    changed = {m for m, v in code_versions().items() if v != before[m]}
    assert changed == {"tasks.train"}


def test_a_changed_default_reruns_only_the_stages_whose_settings_it_changes(edit) -> None:  # noqa: ANN001
    from smoltune.config import PipelineConfig
    from smoltune.pipeline.keys import fetch_parts, train_parts
    from smoltune.records import Prepared, ResolvedModel

    before = code_versions()
    edit("src/smoltune/config.py", lambda t: t.replace(b"Field(2e-4, gt=0", b"Field(3e-4, gt=0"))
    assert code_versions() == before  # config.py is the shape of the values, not code a stage runs
    # What the new default does reach: the settings in the train stage's key, not the fetch stage's.
    old, new = PipelineConfig(), PipelineConfig(train={"learning_rate": 3e-4})
    model = ResolvedModel(source="m", kind="local", path="/m", sha256="0", description="m")
    prepared = Prepared(train_file="t", eval_file="e", train_sha256="1", eval_sha256="2", train_rows=1, eval_rows=1)
    keys = {
        name: [
            parts({"cache_dir": "c", "config": c, "data": c.data, "model": model, "prepared": prepared})[1]
            for c in (old, new)
        ]
        for name, parts in (("fetch", fetch_parts), ("train", train_parts))
    }
    assert keys["fetch"][0] == keys["fetch"][1] and keys["train"][0] != keys["train"][1]


def test_the_base_evaluation_key_leaves_out_the_training() -> None:
    """Every retraining, and every variant of a comparison, shares one measurement of the base; what the base
    answers, on which rows and in which precision is in its key."""
    from smoltune.config import PipelineConfig
    from smoltune.pipeline.keys import evaluate_base_parts
    from smoltune.records import ResolvedModel, Trained, TrainResult

    def base_key(overrides: dict | None = None, eval_sha256: str = "2", **result: str) -> dict:
        config = PipelineConfig(**(overrides or {}))
        model = ResolvedModel(source="m", kind="local", path="/m", sha256="0", description="m")
        prepared = Prepared(
            train_file="t", eval_file="e", train_sha256="1", eval_sha256=eval_sha256, train_rows=1, eval_rows=1
        )
        numbers = dict.fromkeys(["trainable_params", "total_params", "steps", "tokens_seen", "saved_mb"], 1)
        training = TrainResult(
            backend="hf", backend_reason="", lora_rank=16, train_seconds=1.0, tokens_per_second=1.0,
            peak_memory_mb=1.0, losses=[1.0], step_log=[], output_dir=f"/out/{result}", **numbers,
            **{"mode": "lora", "precision": "fp32", "device": "cpu", **result},
        )  # fmt: skip
        trained = Trained(key=str(result), result=training)
        inputs = {"cache_dir": "c", "config": config, "model": model, "prepared": prepared, "trained": trained}
        return evaluate_base_parts(inputs)[1]

    same = base_key()
    assert base_key({"train": {"learning_rate": 1e-3}}) == same  # a retraining
    assert base_key(mode="full") == same  # full fine-tuning measures the same base weights
    assert base_key({"eval": {"answer_max_new_tokens": 4}}) != same
    assert base_key(eval_sha256="3") != same  # other held-out rows
    assert base_key(precision="bf16") != same  # the base runs in the training's precision
    assert base_key(device="cuda") != same  # and on its device


def test_the_evaluation_key_follows_the_content_of_the_base_figures(tmp_path: Path) -> None:
    """`--refresh evaluate_base` measures the base again into the same stage folder, under the same key: the
    figures it wrote, not that key, decide whether the evaluation (which compares with them) reruns."""
    from types import SimpleNamespace

    from smoltune.config import PipelineConfig
    from smoltune.pipeline.keys import evaluate_parts
    from smoltune.records import BaseEvaluated

    base_file = tmp_path / "base.json"
    base_file.write_text(json.dumps({"loss": 2.5, "seconds": 3.1}))
    base = BaseEvaluated(key="b", folder=str(tmp_path), base_file=str(base_file), heldout_sha256="e", precision="fp32")
    # Stand-ins for the other upstream records: only the fields the key function reads.
    inputs = {
        "cache_dir": "c",
        "config": PipelineConfig(),
        "model": SimpleNamespace(sha256="m"),
        "trained": SimpleNamespace(key="t"),
        "prepared": SimpleNamespace(eval_sha256="e"),
        "base": base,
    }
    first = evaluate_parts(inputs)[1]
    assert evaluate_parts(inputs)[1] == first
    base_file.write_text(json.dumps({"seconds": 3.4, "loss": 2.5}))  # measured again, the same figures
    assert evaluate_parts(inputs)[1] == first  # only its time (and the keys' order) differ
    base_file.write_text(json.dumps({"loss": 2.6, "seconds": 3.4}))  # measured again: same key, other figures
    again = evaluate_parts(inputs)[1]
    assert again != first
    assert evaluate_parts({**inputs, "base": base.model_copy(update={"key": "other"})})[1] == again  # content only


@pytest.mark.slow  # over 30 s: `make test-slow` (CI runs it after `make test`)
def test_each_change_reruns_exactly_what_it_affects(
    prefect_server: None, tiny_model_dir: Path, tmp_path: Path, edit, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in generate_rows(60, seed=1)))
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("prompts:\n  - Say hi.\n")
    base = [*tiny_overrides(tiny_model_dir, tmp_path / "runs"), f"data.source={data}", f"eval.prompts_file={prompts}"]
    config = load_config("configs/smoke.yaml", base)
    first, _, _ = run(config)
    assert rerun_stages(first) == set(STAGES)

    unchanged, run_dir, seconds = run(config)
    assert rerun_stages(unchanged) == set() and seconds < 60
    assert unchanged["report"] == "Completed"  # the run's own folder and artifacts are always written
    assert (run_dir / "train" / "adapter").is_dir() and (run_dir / "report.md").is_file()

    prompts.write_text("prompts:\n  - Say hello.\n")  # same path, new content: the base answers them too
    assert rerun_stages(run(config)[0]) == {"evaluate_base", "evaluate"}

    # A retraining measures only the new model: the base's figures do not depend on the training.
    lr = load_config("configs/smoke.yaml", [*base, "train.learning_rate=1e-3"])
    assert rerun_stages(run(lr)[0]) == {"train", "evaluate"}
    longer = load_config("configs/smoke.yaml", [*base, "eval.answer_max_new_tokens=4"])
    assert rerun_stages(run(longer)[0]) == {"evaluate_base", "evaluate"}

    data.write_text("".join(json.dumps(r) + "\n" for r in generate_rows(60, seed=2)))
    assert rerun_stages(run(config)[0]) == AFTER_DATA

    edit("src/smoltune/report/markdown.py")  # the report is rendered anew every run; nothing is retrained
    assert rerun_stages(run(config)[0]) == set()
    edit("data_checks/suite.py")  # a stricter gate re-gates the data and retrains; the same held-out rows keep
    assert rerun_stages(run(config)[0]) == {"validate_dataset", "prepare_dataset", "train", "evaluate"}  # base
    edit("src/smoltune/train/trainer.py")
    assert rerun_stages(run(config)[0]) == {"train", "evaluate"}

    real_installed = versions._installed
    monkeypatch.setattr(versions, "_installed", lambda d: "99.0" if d == "peft" else real_installed(d))
    versions.stage_code.cache_clear()  # a peft upgrade: train, and both evaluations (their code imports peft)
    assert rerun_stages(run(config)[0]) == {"train", "evaluate_base", "evaluate"}


@pytest.mark.slow  # over 30 s: `make test-slow` (CI runs it after `make test`)
def test_a_missing_output_is_rebuilt(prefect_server: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    config = load_config(
        "configs/smoke.yaml", [*tiny_overrides(tiny_model_dir, tmp_path / "runs"), "export.merged=true"]
    )
    stages = [*STAGES, "export"]
    _, run_dir, _ = run(config)

    # A deleted adapter (not the whole folder) retrains; the stages after it keep their keys and stay cached.
    shutil.rmtree((run_dir / "train" / "adapter").resolve())
    states, run_dir, _ = run(config)
    assert rerun_stages(states, stages) == {"train"}
    assert (run_dir / "train" / "adapter" / "adapter_model.safetensors").is_file()

    shutil.rmtree((run_dir / "train").resolve())  # the whole stage folder
    states, run_dir, _ = run(config)
    assert rerun_stages(states, stages) == {"train"}

    shutil.rmtree((run_dir / "export" / "merged").resolve())
    states, run_dir, _ = run(config)
    assert rerun_stages(states, stages) == {"export"} and (run_dir / "export" / "merged" / "config.json").is_file()

    (run_dir / "evaluation" / "answers.json").resolve().unlink()
    states, run_dir, _ = run(config)
    assert rerun_stages(states, stages) == {"evaluate"} and (run_dir / "evaluation" / "answers.json").is_file()

    [base_file] = (Path(config.output.cache_root) / "evaluate_base").glob("*/base.json")
    base_file.unlink()  # the base's figures are measured again, into the same key; the evaluation, keyed by
    states, run_dir, _ = run(config)  # their figures (not their seconds), has the same ones to compare with
    assert rerun_stages(states, stages) == {"evaluate_base"} and base_file.is_file()

    (run_dir / "data" / "eval.jsonl").resolve().unlink()
    states, _, _ = run(config)
    assert rerun_stages(states, stages) == {"prepare_dataset"}  # same rows again: the same keys downstream


def test_a_url_source_reruns_exactly_when_its_content_changes(
    prefect_server: None, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMOLTUNE_HOME", str(tmp_path / "home"))  # its own download cache
    served = tmp_path / "served"
    served.mkdir()
    rows = served / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in generate_rows(60, seed=1)))
    with FileServer(served) as server:
        url = server.url("rows.jsonl")
        config = load_config(
            "configs/smoke.yaml", [*tiny_overrides(tiny_model_dir, tmp_path / "runs"), f"data.source={url}"]
        )
        first, run_dir, _ = run(config)
        assert rerun_stages(first) == set(STAGES) and server.bodies_sent == 1

        states, run_dir, _ = run(config)
        assert rerun_stages(states) == set()
        assert server.bodies_sent == 1 and server.not_modified >= 1  # asked, but no body downloaded

        server.replace(rows, "".join(json.dumps(r) + "\n" for r in generate_rows(60, seed=2)))
        states, run_dir, _ = run(config)
        assert rerun_stages(states) == AFTER_DATA and server.bodies_sent == 2
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["promotion"]["reason"] and "content sha256" in summary["data"]["identity"]

    # Offline: the server is gone; the copy already here is used, and the report says so.
    states, run_dir, _ = run(config)
    assert rerun_stages(states) == {"fetch_dataset"}  # same content, new record (with the offline note)
    assert "offline" in (run_dir / "report.md").read_text()


def test_a_stage_killed_mid_write_is_recomputed_not_trusted(tmp_path: Path) -> None:
    """SIGKILL while a stage writes its folder (any stage: they all go through run_stage) leaves files but no
    record and no marker; the next run clears them and computes the stage whole."""
    import os
    import signal
    import subprocess
    import sys

    folder = NOTE.folder(cache_dir=str(tmp_path), x=1)
    script = f"""
import sys, time
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from tests.pipeline.test_caching import NOTE, Note
def slow(out):
    (out / "half.txt").write_text("partial")
    print("writing", flush=True)
    time.sleep(60)
    return Note(file=str(out / "half.txt"))
NOTE.run(Path({str(folder)!r}), slow)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (folder / "half.txt").exists() and complete_token(folder, Note) is None
    calls: list[Path] = []
    record = NOTE.run(folder, lambda out: write_note(out, calls))
    assert len(calls) == 1 and not (folder / "half.txt").exists() and Path(record.file).read_text() == "hi"


PARTS_CALLS: list[dict] = []


def counted_parts(inputs: dict) -> tuple[str, dict]:
    PARTS_CALLS.append(inputs)
    if inputs["x"] < 0:
        from smoltune.errors import SourceError

        raise SourceError(f"x={inputs['x']}: no such source")
    return inputs["cache_dir"], {"x": inputs["x"]}


COUNTED = Stage("counted", Note, counted_parts, "tests.pipeline.test_caching")


def test_the_key_is_computed_once_per_task_run(prefect_server: None, tmp_path: Path) -> None:
    from prefect import flow, task

    from smoltune.errors import SourceError

    @task(cache_policy=COUNTED.cache_policy(), persist_result=True, result_serializer="json")
    def counted_task(x: int, cache_dir: str) -> Note:
        folder = COUNTED.task_folder(cache_dir, x=x)
        return COUNTED.run(folder, lambda out: write_note(out, []))

    @flow
    def twice(x: int) -> tuple[str, str]:
        first = counted_task(x, str(tmp_path), return_state=True)
        second = counted_task(x, str(tmp_path), return_state=True)
        return first.name, second.name

    PARTS_CALLS.clear()
    assert twice(1) == ("Completed", "Cached")
    assert len(PARTS_CALLS) == 2  # once by each task run's cache policy; never again by the task itself

    @flow
    def once(x: int) -> Note:
        return counted_task(x, str(tmp_path))

    PARTS_CALLS.clear()
    with pytest.raises(SourceError, match="no such source"):
        once(-1)
    assert len(PARTS_CALLS) == 1  # the policy's error is the one the task raises: a bad source is asked once


def test_a_stricter_default_severity_regates(monkeypatch: pytest.MonkeyPatch) -> None:
    """config.py is not code a stage runs, so the gate's defaults reach its key as values."""
    from smoltune import config as config_module
    from smoltune.config import PipelineConfig
    from smoltune.pipeline.keys import validate_parts
    from smoltune.records import Fetched, ResolvedModel

    def gate_key() -> dict:
        config = PipelineConfig()
        model = ResolvedModel(source="m", kind="local", path="/m", sha256="0", description="m")
        fetched = Fetched(source="s", rows_file="r", sha256="1", rows=1, identity="i")
        inputs = {"cache_dir": "c", "fetched": fetched, "model": model, "data": config.data}
        return validate_parts({**inputs, "validation": config.validation, "train": config.train})[1]

    before = gate_key()
    monkeypatch.setitem(config_module.DEFAULT_SEVERITY, "duplicates", "critical")
    assert gate_key() != before
