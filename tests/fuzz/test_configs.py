"""Generated job configs, `--set` values, compare configs and eval prompt files: each loads or ends in exactly
one SmoltuneError (ConfigError for configs, DataError for prompts), never a traceback.

    .venv/bin/pytest -q tests/fuzz          # the CI profile;  make fuzz: the deep profile
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smoltune.config import load_compare_config, load_config
from smoltune.errors import ConfigError, SmoltuneError
from smoltune.evaluate.prompts import load_eval_prompts
from tests.fuzz.strategies import nested

FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)
SECTIONS = ["model", "data", "validation", "train", "eval", "export", "output", "preference", "variants", "x"]
FIELDS = ["source", "max_steps", "lora", "r", "learning_rate", "num_samples", "prompts_file", "mode", "set", "name"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(), st.text(max_size=15),
    st.sampled_from(["embedded", "lora", "full", "../x", "http://[::1", "1e999", "~", "nan"]),
)  # fmt: skip
values = nested(scalars, FIELDS, width=3, max_leaves=10)
documents = st.dictionaries(st.sampled_from(SECTIONS), values, max_size=4)


def loads_or_one_error(call, kind: type[SmoltuneError] = ConfigError) -> None:  # noqa: ANN001
    try:
        call()
    except kind as err:
        assert str(err).strip() and "Traceback" not in str(err)


def write(folder: Path, name: str, data: bytes) -> Path:
    path = Path(tempfile.mkdtemp(dir=folder)) / name
    path.write_bytes(data)
    return path


@FUZZ
@given(documents)
def test_generated_job_configs(tmp_path: Path, document: dict) -> None:
    path = write(tmp_path, "job.yaml", yaml.safe_dump(document).encode())
    loads_or_one_error(lambda: load_config(path))


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_as_a_job_config(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path, "job.yaml", data)
    loads_or_one_error(lambda: load_config(path))


@FUZZ
@given(st.lists(st.text(max_size=40), max_size=4))
def test_arbitrary_set_overrides(overrides: list[str]) -> None:
    loads_or_one_error(lambda: load_config(None, overrides))


@FUZZ
@given(
    st.lists(st.tuples(st.sampled_from(["train", "train.lora", "data", "eval", "x.y", "train..r"]), values), max_size=3)
)
def test_generated_set_overrides(pairs: list[tuple[str, object]]) -> None:
    overrides = [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}" for key, value in pairs]
    loads_or_one_error(lambda: load_config(None, overrides))


@FUZZ
@given(documents, st.lists(st.dictionaries(st.sampled_from(["name", "set", "x"]), values, max_size=3), max_size=3))
def test_generated_compare_configs(tmp_path: Path, document: dict, variants: list[dict]) -> None:
    path = write(tmp_path, "compare.yaml", yaml.safe_dump({**document, "variants": variants}).encode())
    loads_or_one_error(lambda: load_compare_config(path))


@FUZZ
@given(st.one_of(st.binary(max_size=300), values.map(lambda v: yaml.safe_dump({"prompts": v}).encode())))
def test_generated_eval_prompt_files(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path, "prompts.yaml", data)
    loads_or_one_error(lambda: load_eval_prompts(path), SmoltuneError)
