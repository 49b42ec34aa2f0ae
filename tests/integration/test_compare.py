"""The comparison: compare YAML validation, and the compare flow on the tiny model with two variants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smoltune.config import ConfigError, load_compare_config, variant_config
from tests.tiny_model import tiny_overrides


def test_shipped_compare_config_has_the_three_seed_variants() -> None:
    compare = load_compare_config("configs/compare.yaml")
    jobs = {v.name: variant_config(compare, v) for v in compare.variants}
    assert list(jobs) == ["lora-r16", "lora-r256", "full"]
    assert (jobs["lora-r16"].train.lora.r, jobs["lora-r256"].train.lora.r) == (16, 256)
    assert jobs["full"].train.mode == "full"
    assert all(job.train.max_steps == 60 and job.data.num_samples == 100 for job in jobs.values())


def test_bad_variants_are_refused_before_anything_runs(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("variants:\n  - {name: a, set: {train.lora.r: 0}}\n")
    with pytest.raises(ConfigError, match="variant a"):
        load_compare_config(path)
    path.write_text("variants:\n  - {name: a}\n  - {name: a}\n")
    with pytest.raises(ConfigError, match="unique"):
        load_compare_config(path)
    path.write_text("train: {max_steps: 3}\n")
    with pytest.raises(ConfigError, match="variants"):
        load_compare_config(path)


def test_compare_flow_on_the_tiny_model(prefect_server: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    from flows.compare import compare

    path = tmp_path / "compare.yaml"
    path.write_text(
        "variants:\n"
        "  - {name: lora-r4, set: {train.lora.r: 4, train.lora.alpha: 4}}\n"
        "  - {name: full, set: {train.mode: full}}\n"
    )
    config = load_compare_config(path, tiny_overrides(tiny_model_dir, tmp_path / "runs"))
    run_dir = Path(compare(config=config))
    report = (run_dir / "compare.md").read_text()
    assert "| lora-r4 |" in report and "| full |" in report
    assert "`lora-r4` against `full`" in report and "claims hold" in report
    data = json.loads((run_dir / "compare.json").read_text())
    assert [r["variant"] for r in data["rows"]] == ["lora-r4", "full"]
    assert data["rows"][0]["trainable_params"] < data["rows"][1]["trainable_params"]
    assert len(data["claims"]) == 5
    # Shared data: both variants were evaluated on the same held-out rows; each has its own outputs.
    assert (run_dir / "lora-r4" / "train" / "adapter").is_dir() and (run_dir / "full" / "train" / "model").is_dir()
    answers = [json.loads((run_dir / v / "evaluation" / "answers.json").read_text()) for v in ("lora-r4", "full")]
    assert [a["reference"] for a in answers[0]] == [a["reference"] for a in answers[1]]
    # One measurement of the base for both variants (its key leaves out the training): the second found it Cached.
    bases = [p for p in (Path(config.pipeline.output.cache_root) / "evaluate_base").iterdir() if p.is_dir()]
    assert len(bases) == 1 and [a["base"] for a in answers[0]] == [a["base"] for a in answers[1]]
    assert (run_dir / "compare.html").read_text().count("data:image/png;base64,") == 1
