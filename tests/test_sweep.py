"""The sweep flow on a local Dask cluster (prefect-dask): a 2 x 1 grid on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from smoltune.config import load_config
from tests.tiny_model import tiny_overrides


def test_two_ranks_on_a_local_dask_cluster(
    prefect_server: None, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL

    from flows.sweep import sweep

    # Dask worker processes report their task runs to the same API as this test.
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    config = load_config("configs/smoke.yaml", tiny_overrides(tiny_model_dir, tmp_path / "runs"))
    rows = sweep(config=config, ranks=[4, 8], learning_rates=[1e-3])
    assert [(r["rank"], r["learning_rate"]) for r in rows] == [(4, 1e-3), (8, 1e-3)]
    assert rows[0]["output_dir"] != rows[1]["output_dir"]
    assert all(Path(r["output_dir"], "adapter_model.safetensors").is_file() for r in rows)
