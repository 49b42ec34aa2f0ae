"""Model resolution: embedded GGUF located, local folders hashed, hub ids fail offline with a way out."""

from __future__ import annotations

from pathlib import Path

import pytest

from smoltune.model import ModelResolutionError, find_embedded_gguf, resolve_model


def test_embedded_gguf_is_installed() -> None:
    gguf = find_embedded_gguf()
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gguf.stat().st_size > 50_000_000


def test_local_folder_resolves_with_content_hash(tiny_model_dir: Path) -> None:
    resolved = resolve_model(str(tiny_model_dir))
    assert resolved.kind == "local" and resolved.path == str(tiny_model_dir.resolve())
    assert resolved == resolve_model(str(tiny_model_dir))
    assert len(resolved.sha256) == 64


def test_folder_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelResolutionError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_offline_hub_id_names_embedded_as_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelResolutionError) as err:
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "model.source=embedded" in str(err.value)


def test_nonsense_source_is_explained() -> None:
    with pytest.raises(ModelResolutionError, match="neither 'embedded'"):
        resolve_model("not a model")
