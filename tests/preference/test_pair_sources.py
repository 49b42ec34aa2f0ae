"""Pairs from outside the project: a file and a URL (a real HTTP server on 127.0.0.1 standing in for a remote
host) in the shapes users have, normalised and named, keyed by their content."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from smoltune.config import PreferenceConfig
from smoltune.files import read_jsonl
from smoltune.pipeline.keys import fetch_preferences_parts
from smoltune.preference.stage import fetch_pairs
from smoltune.records import ResolvedModel, TrainResult
from tests.http_files import FileServer

MODEL = ResolvedModel(source="x", kind="local", path="/nowhere", sha256="0", description="unused by file sources")
SFT = TrainResult("hf", "", "lora", 4, "cpu", 1, 2, 1, 1.0, 1, 1.0, 1.0, [1.0], [], "/nowhere", 0.0)


def test_a_standard_file_behind_a_url(tmp_path: Path) -> None:
    rows = [{"prompt": f"Say {i}.", "chosen": f"{i}", "rejected": f"{i + 1}"} for i in range(5)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    out.mkdir()
    with FileServer(tmp_path) as server:
        pref = PreferenceConfig(source=server.url("pairs.jsonl"))
        got = fetch_pairs(pref, out, MODEL, SFT, "alpaca")
    assert got.shape == "standard" and got.pairs == 5 and got.identity.startswith("content sha256")
    first = read_jsonl(got.pairs_file)[0]
    assert (first["instruction"], first["input"], first["chosen"], first["rejected"]) == ("Say 0.", "", "0", "1")


def test_conversational_parquet_and_its_content_in_the_key(tmp_path: Path) -> None:
    def conversation(answer: str) -> list[dict]:
        return [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": answer}]

    frame = pd.DataFrame({"chosen": [conversation("Blue.")] * 3, "rejected": [conversation("Seven.")] * 3})
    source = tmp_path / "pairs.parquet"
    frame.to_parquet(source)
    out = tmp_path / "out"
    out.mkdir()
    pref = PreferenceConfig(source=str(source))
    got = fetch_pairs(pref, out, MODEL, SFT, "alpaca")
    assert got.shape == "conversational"
    assert read_jsonl(got.pairs_file)[0]["chosen"] == "Blue."
    key = fetch_preferences_parts({"pref": pref, "cache_dir": str(tmp_path), "trained": None, "template": "alpaca"})
    frame.iloc[:2].to_parquet(source)  # new content, same path: a new key
    assert (
        fetch_preferences_parts({"pref": pref, "cache_dir": str(tmp_path), "trained": None, "template": "alpaca"})
        != key
    )
