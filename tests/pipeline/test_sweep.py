"""The sweep's grid and its Dask task runner (the sweep itself runs on a real cluster in test_scale_out.py)."""

from __future__ import annotations

import pytest

from smoltune.config import PipelineConfig


def test_local_cluster_unless_an_address_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.sweep import dask_runner

    monkeypatch.delenv("SMOLTUNE_DASK_ADDRESS", raising=False)
    local = dask_runner()
    assert local.address is None and local.cluster_kwargs["n_workers"] == 1
    assert dask_runner("tcp://10.0.0.2:8786").address == "tcp://10.0.0.2:8786"
    monkeypatch.setenv("SMOLTUNE_DASK_ADDRESS", "tcp://10.0.0.3:8786")
    assert dask_runner().address == "tcp://10.0.0.3:8786"


def test_grid_has_one_job_per_point_with_alpha_following_rank() -> None:
    from flows.sweep import grid_configs

    jobs = grid_configs(PipelineConfig(), [4, 8], [1e-4, 2e-4])
    assert [(j.train.lora.r, j.train.lora.alpha, j.train.learning_rate) for j in jobs] == [
        (4, 4, 1e-4),
        (4, 4, 2e-4),
        (8, 8, 1e-4),
        (8, 8, 2e-4),
    ]
