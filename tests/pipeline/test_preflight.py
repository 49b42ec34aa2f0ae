"""Everything a run will read is read before training starts: the eval prompts file, the model folder, the
architecture a requested export needs. Each failure is one SmoltuneError with its documented exit code."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from smoltune.config import load_config
from smoltune.errors import DataError, ExportError, SourceError
from smoltune.export.weights import check_exports
from smoltune.model import resolve_model
from smoltune.pipeline.runs import begin_flow_run


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "non-empty list"),
        (b"\xff\xfe\x00bad", "cannot read eval prompts"),
        (b"prompts:\n  - a\nprompts:\n  - b\n", "duplicate key"),
        (b"prompts: [{input: only}]\n", "prompt 1 needs"),
        (b"[" * 3000, "nested too deeply"),
    ],
)
def test_a_bad_eval_prompts_file_stops_the_run_before_anything_runs(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    prompts = tmp_path / "prompts.yaml"
    prompts.write_bytes(content)
    config = load_config(None, [f"eval.prompts_file={prompts}", f"output.runs_dir={tmp_path / 'runs'}"])
    with pytest.raises(DataError, match=expected):
        begin_flow_run(config, "test")
    assert not (tmp_path / "runs").exists()  # no run folder for a run that never started


def test_an_incomplete_model_folder_is_refused_when_resolved(tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    assert resolve_model(str(folder)).kind == "local"
    (folder / "tokenizer.json").unlink()
    (folder / "model.safetensors").unlink()
    with pytest.raises(SourceError, match="no tokenizer .*; no weights"):
        resolve_model(str(folder))
    (folder / "config.json").write_text("{not json")
    with pytest.raises(SourceError, match="config.json cannot be read"):
        resolve_model(str(folder))


def test_an_export_the_architecture_cannot_take_is_refused_before_training(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ExportError, match="set export.gguf=false") as err:
        check_exports(tmp_path, gguf_requested=True)
    assert err.value.exit_code == 7
    check_exports(tmp_path, gguf_requested=False)  # nothing requested, nothing to refuse
