"""Remote identity: a hub model or dataset is keyed by the commit its revision points at (a moved `main` is new
data), a pinned commit needs no network, and offline the key falls back without failing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from smoltune import hub
from smoltune.config import DataConfig, ModelConfig
from smoltune.pipeline.keys import data_identity, model_identity


class FakeApi:
    """huggingface_hub.HfApi's two lookups, answering from a dict {(repo, revision): sha}."""

    commits: dict = {}
    calls: list = []

    def model_info(self, repo_id: str, revision: str | None = None) -> SimpleNamespace:
        return self._info(repo_id, revision)

    def dataset_info(self, repo_id: str, revision: str | None = None) -> SimpleNamespace:
        return self._info(repo_id, revision)

    def _info(self, repo_id: str, revision: str | None) -> SimpleNamespace:
        FakeApi.calls.append((repo_id, revision))
        if (repo_id, revision) not in FakeApi.commits:
            raise OSError("offline")
        return SimpleNamespace(sha=FakeApi.commits[(repo_id, revision)])


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> type[FakeApi]:
    import huggingface_hub

    FakeApi.commits, FakeApi.calls = {}, []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return FakeApi


def test_a_moved_branch_is_new_data(fake_hub: type[FakeApi]) -> None:
    data = DataConfig(source="org/rows")
    fake_hub.commits[("org/rows", None)] = "a" * 40
    before = data_identity(data)
    fake_hub.commits[("org/rows", None)] = "b" * 40  # someone pushed to main
    assert data_identity(data) != before == {"commit": "a" * 40}


def test_a_hub_model_is_keyed_by_its_commit(fake_hub: type[FakeApi]) -> None:
    fake_hub.commits[("org/model", "v1")] = "c" * 40
    assert model_identity(ModelConfig(source="org/model", revision="v1")) == {"commit": "c" * 40}


def test_a_pinned_commit_needs_no_network(fake_hub: type[FakeApi]) -> None:
    assert hub.hub_commit("dataset", "org/rows", "d" * 40) == "d" * 40 and fake_hub.calls == []


def test_offline_the_lookup_gives_none_instead_of_failing(fake_hub: type[FakeApi]) -> None:
    assert hub.hub_commit("model", "org/unknown") is None


@pytest.mark.parametrize(
    ("text", "is_hub"),
    [("org/name", True), ("data/x.jsonl", False), ("./org/name", False), ("a/b/c", False), ("~/m", False)],
)
def test_paths_are_never_taken_for_hub_ids(text: str, is_hub: bool) -> None:
    assert hub.is_hub_id(text) is is_hub


def test_the_hub_token_comes_from_a_prefect_secret_block(prefect_server: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.blocks.system import Secret

    from smoltune.errors import ConfigError
    from smoltune.pipeline.settings import use_hub_token

    monkeypatch.delenv("HF_TOKEN", raising=False)
    Secret(value="hf_" + "x" * 30).save("smoltune-test-hub-token", overwrite=True)
    use_hub_token("smoltune-test-hub-token")
    assert __import__("os").environ["HF_TOKEN"] == "hf_" + "x" * 30
    with pytest.raises(ConfigError, match="no Prefect Secret block 'absent'"):
        use_hub_token("absent")
