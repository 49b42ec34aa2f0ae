"""Shared fixtures: a tiny random llama for fast training tests, and a Prefect test server.

make test        # every test but the `slow` ones (over ~30 s each); `make test-slow` runs those (CI: both)
make test-fast   # the inner loop: no `slow` tests and nothing under tests/integration/ (servers, workers,
                 # browsers, whole flows), which is marked `integration`
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from hypothesis import settings

from smoltune.pipeline.settings import apply_prefect_defaults

REPO = Path(__file__).resolve().parents[1]
INTEGRATION = Path(__file__).resolve().parent / "integration"

# Tests run from the repository root so that relative paths in configs (configs/eval_prompts.yaml) resolve.
os.chdir(REPO)
# Keep tests off the network: a hub lookup fails at once instead of waiting on timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Two cores: one training at a time, and OpenMP threads that yield instead of spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
apply_prefect_defaults()

# Generated inputs (tests/fuzz, Hypothesis): a quick profile for every test run, a deep one for `make fuzz`
# (HYPOTHESIS_PROFILE=deep). No deadline: two shared cores make single examples slow now and then.
settings.register_profile("ci", max_examples=60, deadline=None, print_blob=True)
settings.register_profile("deep", max_examples=1000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server or rendezvous a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/integration/ are marked `integration` (the folder is the marker, so no file can forget
    it). `gpu` tests run where CUDA is (`make gpu-check` on a GPU machine) and are skipped, saying so, elsewhere."""
    for item in items:
        if Path(item.path).is_relative_to(INTEGRATION):
            item.add_marker(pytest.mark.integration)
    gpu_tests = [item for item in items if "gpu" in item.keywords]
    if not gpu_tests:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu_tests:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (run by `make gpu-check` on one)"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer llama (hidden 64) with a small BPE tokenizer trained on built-in rows."""
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect API with its own database for the whole session (flows, artifacts)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
