"""Every flow starts through the same preamble (smoltune.pipeline.runs.begin_flow_run): a run started from the
Prefect API or UI, with its parameters as JSON, gets the CLI's checks, absolute paths, the hub token from its
Secret block and a run folder, whichever flow it is."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from smoltune.config import load_config
from smoltune.data.builtin import generate_rows
from smoltune.errors import ConfigError
from tests.conftest import REPO
from tests.tiny_model import tiny_overrides

TOKEN_BLOCK = "smoltune-test-preamble-token"
TOKEN = "hf_" + "p" * 30


def api_parameters(tiny_model_dir: Path, tmp_path: Path, *extra: str) -> dict:
    """The job as an API or UI run sends it: JSON, with the data file given relative to the working directory."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in generate_rows(40, seed=4)))
    relative = os.path.relpath(rows, REPO)  # the tests run from the repository root
    overrides = [*tiny_overrides(tiny_model_dir, tmp_path / "runs"), f"data.source={relative}", *extra]
    config = load_config("configs/smoke.yaml", overrides).model_dump(mode="json")
    config["data"]["source"] = relative  # load_config made it absolute: undo, as the UI form would send it
    config["model"]["hub_token_secret"] = TOKEN_BLOCK
    return config


def test_a_sweep_started_from_the_api_gets_absolute_paths_and_the_hub_token(
    prefect_server: None, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.blocks.system import Secret

    from flows.sweep import sweep

    monkeypatch.delenv("HF_TOKEN", raising=False)
    Secret(value=TOKEN).save(TOKEN_BLOCK, overwrite=True)
    parameters = api_parameters(tiny_model_dir, tmp_path)
    assert not Path(parameters["data"]["source"]).is_absolute()

    # An empty grid: the shared stages run (model, data, gate, split), no training.
    assert sweep(config=parameters, ranks=[], learning_rates=[2e-4]) == []

    [run_dir] = [d for d in (tmp_path / "runs").iterdir() if d.name != "_cache"]
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written["data"]["source"] == str(tmp_path / "rows.jsonl")
    assert Path(written["eval"]["prompts_file"]).is_absolute()
    assert json.loads((run_dir / "sweep.json").read_text()) == []
    assert os.environ["HF_TOKEN"] == TOKEN


@pytest.mark.parametrize("name", ["finetune", "compare", "sweep"])
def test_every_flow_refuses_a_cross_field_mistake_before_any_stage(
    prefect_server: None, tiny_model_dir: Path, tmp_path: Path, name: str
) -> None:
    from flows.compare import compare
    from flows.finetune import finetune
    from flows.sweep import sweep

    config = api_parameters(tiny_model_dir, tmp_path)
    config["train"]["warmup_steps"] = config["train"]["max_steps"] + 1
    config["model"]["hub_token_secret"] = None
    calls = {
        "finetune": lambda: finetune(config=config),
        "compare": lambda: compare(config={"pipeline": config, "variants": [{"name": "a", "set": {}}]}),
        "sweep": lambda: sweep(config=config, ranks=[4], learning_rates=[2e-4]),
    }
    with pytest.raises(ConfigError, match="train.warmup_steps"):
        calls[name]()
    assert not (tmp_path / "runs").exists()  # nothing ran: no run folder, no stage folder
