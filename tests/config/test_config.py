"""Config: defaults are the seed job, YAML + --set overrides, every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from smoltune.config import (
    LORA_TARGETS_LLAMA,
    ConfigError,
    PipelineConfig,
    apply_overrides,
    load_config,
    with_absolute_paths,
)

CONFIGS = Path("configs")
PIPELINE_CONFIGS = ["default.yaml", "smoke.yaml", "t4.yaml", "dpo.yaml"]


def test_defaults_are_the_seed_job() -> None:
    config = PipelineConfig()
    assert config.model.source == "embedded"
    assert config.data.num_samples == 100
    lora, train = config.train.lora, config.train
    assert (lora.r, lora.alpha, lora.dropout) == (16, 16, 0.0)
    assert lora.target_modules == LORA_TARGETS_LLAMA
    assert (train.max_steps, train.batch_size, train.grad_accum) == (60, 2, 4)
    assert (train.learning_rate, train.seed, train.warmup_steps) == (2e-4, 3407, 5)


def test_default_yaml_equals_the_defaults() -> None:
    # Loading resolves relative paths against the current directory; otherwise the YAML is the defaults.
    assert load_config(CONFIGS / "default.yaml") == with_absolute_paths(PipelineConfig())
    assert load_config(CONFIGS / "default.yaml").eval.prompts_file == str(Path("configs/eval_prompts.yaml").resolve())


@pytest.mark.parametrize("name", PIPELINE_CONFIGS)
def test_every_shipped_pipeline_config_loads(name: str) -> None:
    config = load_config(CONFIGS / name)
    assert config.train.max_steps >= 1


def test_the_dpo_job_is_the_seed_job_plus_preference_tuning() -> None:
    config = load_config(CONFIGS / "dpo.yaml")
    assert config.preference is not None and config.preference.source == "embedded"
    assert config.train == PipelineConfig().train  # its SFT stages are the seed job's: one cache for both
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "dpo.yaml", ["train.mode=full", "model.load_in_4bit=true", "preference.loss_type=x"])
    text = str(err.value)
    assert "unknown loss_type 'x'" in text
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "dpo.yaml", ["train.mode=full"])
    assert "set train.mode=lora" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "dpo.yaml", ["model.load_in_4bit=true"])
    assert "model.load_in_4bit=false" in str(err.value)


def test_every_yaml_in_configs_is_known() -> None:
    """A new YAML must be added to a test that loads it (pipeline configs above, or eval prompts)."""
    known = set(PIPELINE_CONFIGS) | {"eval_prompts.yaml", "compare.yaml"}  # compare: tests/integration/test_compare.py
    assert {p.name for p in CONFIGS.glob("*.yaml")} == known


def test_overrides_are_typed_and_nested(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x.jsonl").write_text("{}\n")
    smoke = CONFIGS.resolve() / "smoke.yaml"
    monkeypatch.chdir(tmp_path)
    prompts = f"eval.prompts_file={smoke.parent / 'eval_prompts.yaml'}"
    config = load_config(smoke, ["train.max_steps=5", "train.lora.r=8", "data.source=x.jsonl", prompts])
    assert config.train.max_steps == 5 and isinstance(config.train.max_steps, int)
    assert config.train.lora.r == 8
    assert config.data.source == str(tmp_path / "x.jsonl")  # relative to the current directory, made absolute
    assert load_config(smoke, ["data.source=org/dataset", prompts]).data.source == "org/dataset"  # a hub id


def test_apply_overrides_does_not_mutate_its_input() -> None:
    data = {"train": {"max_steps": 3}}
    apply_overrides(data, ["train.max_steps=4"])
    assert data == {"train": {"max_steps": 3}}


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.max_steps=0", "train.lr=1", "data.num_samples=-1", "eval.prompts_file=nope.yaml"])
    problems = err.value.problems
    assert len(problems) == 3  # the three field errors; the file check waits for a valid structure
    text = str(err.value)
    assert "train.max_steps" in text and "train.lr" in text and "data.num_samples" in text


def test_semantic_problems_are_listed() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.warmup_steps=10", "train.max_steps=5", "eval.prompts_file=missing.yaml"])
    assert len(err.value.problems) == 2
    assert "warmup_steps" in str(err.value) and "missing.yaml" in str(err.value)


def test_malformed_override_and_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config(None, ["train.max_steps"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")


def test_config_round_trips_through_yaml(tmp_path: Path) -> None:
    config = load_config(CONFIGS / "smoke.yaml", ["train.learning_rate=1e-3"])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert load_config(path) == config


def test_every_lr_scheduler_offered_is_one_transformers_has() -> None:
    from typing import get_args

    from transformers import SchedulerType

    offered = get_args(PipelineConfig.model_fields["train"].annotation.model_fields["lr_scheduler"].annotation)
    assert set(offered) <= {s.value for s in SchedulerType} and "linear" in offered


# -- no silent wrong result: overrides merge, duplicate keys refused, compare variants apply or refuse ---------


def test_a_mapping_override_merges_field_by_field(tmp_path: Path) -> None:
    """`--set 'train={max_steps: 5}'` changes max_steps only; the rest of train keeps the job's values."""
    job = tmp_path / "job.yaml"
    job.write_text("train:\n  learning_rate: 0.001\n  lora: {r: 8, alpha: 32}\n")
    config = load_config(job, ["train={max_steps: 5}", "train.lora={r: 4}"])
    assert (config.train.max_steps, config.train.learning_rate) == (5, 0.001)
    assert (config.train.lora.r, config.train.lora.alpha) == (4, 32)
    # A value that is not a mapping still replaces: lists are values, not sections.
    assert load_config(job, ["train.lora.target_modules=[q_proj]"]).train.lora.target_modules == ["q_proj"]


def test_duplicate_yaml_keys_are_an_error(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("train:\n  max_steps: 5\n  learning_rate: 0.1\n  max_steps: 50\n")
    with pytest.raises(ConfigError, match="line 4: duplicate key 'max_steps' \\(first on line 2\\)"):
        load_config(job)
    with pytest.raises(ConfigError, match="duplicate key"):
        load_config(None, ["train={max_steps: 1, max_steps: 2}"])
    job.write_text("base: &b {max_steps: 5}\ntrain:\n  <<: *b\n  max_steps: 7\n")  # a merge key is no duplicate
    with pytest.raises(ConfigError, match="base: Extra inputs"):
        load_config(job)


def test_an_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
    job = tmp_path / "bomb.yaml"
    job.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="aliases"):
        load_config(job)


def test_compare_variants_apply_every_field_or_are_refused(tmp_path: Path) -> None:
    from smoltune.config import load_compare_config, variant_config

    path = tmp_path / "c.yaml"
    path.write_text("train: {learning_rate: 0.001}\nvariants:\n  - {name: a, set: {train: {lora: {r: 8}}}}\n")
    compare = load_compare_config(path)
    job = variant_config(compare, compare.variants[0])
    assert (job.train.lora.r, job.train.lora.alpha, job.train.learning_rate) == (8, 16, 0.001)
    for field in ("model.source: x", "data.num_samples: 5", "train.max_seq_length: 64", "validation: {min_rows: 2}"):
        path.write_text(f"variants:\n  - {{name: a, set: {{{field}}}}}\n")
        with pytest.raises(ConfigError, match="would be ignored"):
            load_compare_config(path)
    for text in ("- just a list\n", "variants:\n  - 3\n", "variants:\n  - {name: a, colour: red}\n"):
        path.write_text(text)
        with pytest.raises(ConfigError):
            load_compare_config(path)


def test_report_to_reaches_trl_untouched(tmp_path: Path) -> None:
    """W&B passes through TRL's own reporters: train.report_to goes to the trainer settings as given."""
    from smoltune.config import TrainConfig
    from smoltune.train.sft import sft_settings

    assert sft_settings(TrainConfig(), "cpu", str(tmp_path))["report_to"] == "none"
    assert sft_settings(TrainConfig(report_to=["wandb"]), "cpu", str(tmp_path))["report_to"] == ["wandb"]
