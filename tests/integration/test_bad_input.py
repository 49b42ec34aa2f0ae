"""The bad-input and fault matrix: every failure ends in a few lines with its documented exit code, before any
training where the input is at fault, and nothing is left half-written or silently wrong.

Each case runs the real CLI (`smoltune run`) in this process against a temporary Prefect server, on the tiny
model; URL cases use a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smoltune.cli import app
from smoltune.data.builtin import generate_rows
from smoltune.errors import ConfigError, DataError, ModelError, SourceError, TrainingError
from tests.tiny_model import tiny_overrides

CONFIG, DATA, SOURCE, MODEL, TRAINING = (
    c.exit_code for c in (ConfigError, DataError, SourceError, ModelError, TrainingError)
)


SMOLTUNE = str(Path(sys.executable).parent / "smoltune")


def smoltune(*args: str) -> tuple[int, str]:
    """`smoltune run` as a user runs it: its own process, everything it prints (stdout + stderr)."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value() or ""}
    done = subprocess.run(
        [SMOLTUNE, "run", "--config", "configs/smoke.yaml", *args], env=env, capture_output=True, text=True, timeout=600
    )
    return done.returncode, done.stderr + done.stdout


def job(tiny_model_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [arg for o in (*tiny_overrides(tiny_model_dir, tmp_path / "runs"), *extra) for arg in ("--set", o)]


def rows_file(tmp_path: Path, rows: list[dict], name: str = "rows.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def assert_one_clean_error(output: str, *phrases: str) -> None:
    assert "Traceback" not in output, output
    assert output.count("error:") == 1, output
    for phrase in phrases:
        assert phrase in output, output


def nothing_trained(tmp_path: Path) -> bool:
    return not (tmp_path / "runs" / "_cache" / "train").exists()


# -- configuration: exit 2, nothing runs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        (["--set", "train.lr_scheduler=[oops"], ["not valid YAML", "quote it"]),
        (["--set", "train.lr_scheduler=cosinus"], ["train.lr_scheduler", "'linear'"]),
        (["--set", "output.run_name=../x"], ["output.run_name", "pattern"]),
        (["--set", "data.source=data/x.jsonl"], ["data.source: data/x.jsonl does not exist"]),
        (["--set", "model.source=./no-model"], ["model.source: ./no-model does not exist"]),
        (["--set", "train.max_steps=0", "--set", "train.nope=1"], ["2 problem(s)", "train.nope"]),
        (["--set", "validation.severity={gate: warning}"], ["unknown check(s) ['gate']"]),
        (["--refresh", "trian"], ["--refresh takes stages"]),
    ],
)
def test_config_mistakes_exit_2_before_anything_runs(
    prefect_server: None, args: list[str], phrases: list[str], tmp_path: Path
) -> None:
    code, output = smoltune(*args, "--set", f"output.runs_dir={tmp_path / 'runs'}")
    assert code == CONFIG
    assert_one_clean_error(output, *phrases)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_config_files_that_are_not_yaml_jobs(tmp_path: Path) -> None:
    binary = tmp_path / "job.yaml"
    binary.write_bytes(b"train:\n  max_steps: \xff\xfe\n")
    for path, phrase in ((tmp_path, "is a folder"), (binary, "not UTF-8")):
        result = CliRunner().invoke(app, ["run", "--config", str(path)])
        assert result.exit_code == CONFIG
        assert_one_clean_error(result.output, phrase)


def test_cross_field_checks_hold_for_api_runs_too(prefect_server: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    from flows.finetune import finetune
    from smoltune.config import PipelineConfig

    data = PipelineConfig().model_dump()
    data["train"].update(warmup_steps=50, max_steps=5)  # each field valid, the pair not
    data["output"]["runs_dir"] = str(tmp_path / "runs")
    with pytest.raises(ConfigError, match="warmup_steps"):
        finetune(config=PipelineConfig.model_validate(data))
    assert not (tmp_path / "runs").exists()


# -- rows: exit 3 from the gate, never a KeyError -------------------------------------------------------


def gsm8k_like(count: int) -> list[dict]:
    return [{"instruction": f"What is {i} + {i}?", "input": "", "output": f"{i} + {i} = {2 * i}"} for i in range(count)]


@pytest.mark.parametrize(
    ("broken", "phrases"),
    [
        ({3: {"drop": "output"}}, ["'output' not null", "rows 3"]),
        ({4: {"instruction": None}}, ["'instruction' not null", "rows 4"]),
        ({5: {"output": 42}}, ["'output' is text", "rows 5"]),
        ({6: {"instruction": "   "}}, ["'instruction' not empty after strip", "rows 6"]),
        ({7: {"output": ["a", "list"]}}, ["'output' is text", "rows 7"]),
    ],
)
def test_bad_rows_are_reported_by_the_gate(
    prefect_server: None, tiny_model_dir: Path, tmp_path: Path, broken: dict, phrases: list[str]
) -> None:
    rows = gsm8k_like(30)
    for index, change in broken.items():
        if "drop" in change:
            rows[index].pop(change["drop"])
        else:
            rows[index].update(change)
    code, output = smoltune(*job(tiny_model_dir, tmp_path, f"data.source={rows_file(tmp_path, rows)}"))
    assert code == DATA
    assert_one_clean_error(output, "data validation failed", "training was not started", *phrases)
    assert nothing_trained(tmp_path)


def test_a_source_with_no_answer_column_names_the_mapping(
    prefect_server: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows = [{"question": r["instruction"], "answer": r["output"]} for r in gsm8k_like(20)]
    code, output = smoltune(*job(tiny_model_dir, tmp_path, f"data.source={rows_file(tmp_path, rows)}"))
    assert code == DATA
    assert_one_clean_error(output, "no 'instruction' or 'output' column in any row", "data.columns")


def test_prompts_longer_than_max_seq_length_leave_no_answer(
    prefect_server: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows = [{"instruction": "word " * 400 + str(i), "input": "", "output": "yes"} for i in range(30)]
    severity = "validation.severity={token_length: warning}"  # even with long rows allowed, no label: no training
    code, output = smoltune(*job(tiny_model_dir, tmp_path, f"data.source={rows_file(tmp_path, rows)}", severity))
    assert code == DATA
    assert_one_clean_error(output, "answer keeps at least one token within max_seq_length (256)")
    assert nothing_trained(tmp_path)


def test_rows_that_all_repeat_held_out_questions_leave_nothing_to_train(
    prefect_server: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows = [{"instruction": "Same question?", "input": "", "output": f"answer {i}"} for i in range(30)]
    lenient = "validation.max_duplicate_rate=1"
    code, output = smoltune(*job(tiny_model_dir, tmp_path, f"data.source={rows_file(tmp_path, rows)}", lenient))
    assert code == DATA
    assert_one_clean_error(output, "no training rows left", "data.eval_samples")
    assert nothing_trained(tmp_path)


def test_fewer_rows_than_asked_is_said_not_hidden(prefect_server: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    path = rows_file(tmp_path, gsm8k_like(30))
    code, output = smoltune(*job(tiny_model_dir, tmp_path, f"data.source={path}", "data.num_samples=500"))
    assert code == 0, output
    report = (Path(output.strip().splitlines()[-1]) / "report.md").read_text()
    assert "24 training rows of the 500 asked for" in report  # 30 rows, 6 held out


def test_multi_turn_conversations_train_on_every_reply(
    prefect_server: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    def chat(i: int) -> dict:
        turns = [("system", "Be brief.")] + [
            t for k in range(3) for t in (("user", f"q{i}.{k}"), ("assistant", f"a{i}.{k}"))
        ]
        return {"messages": [{"role": r, "content": c} for r, c in turns]}

    path = rows_file(tmp_path, [chat(i) for i in range(20)])
    code, output = smoltune(*job(tiny_model_dir, tmp_path, f"data.source={path}", "data.num_samples=100"))
    assert code == 0, output
    run_dir = Path(output.strip().splitlines()[-1])
    trained = [json.loads(line) for line in (run_dir / "data" / "train.jsonl").read_text().splitlines()]
    held_out = [json.loads(line) for line in (run_dir / "data" / "eval.jsonl").read_text().splitlines()]
    assert len(trained) + len(held_out) == 60  # 3 replies in each of 20 conversations, none dropped
    late = next(r for r in trained if r["output"].endswith(".2"))
    assert "User: q" in late["input"] and "Assistant: a" in late["input"] and late["input"].startswith("Be brief.")


# -- sources: exit 4, one layer of retries, a deadline --------------------------------------------------


class Scripted(BaseHTTPRequestHandler):
    """Answers GET by a script of (status, body, seconds between bytes), one entry per request."""

    script: list[tuple[int, bytes, float]] = []
    requests = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        cls = type(self)
        status, body, trickle = cls.script[min(cls.requests, len(cls.script) - 1)]
        cls.requests += 1
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for start in range(0, len(body), 1 if trickle else len(body) or 1):
            try:
                self.wfile.write(body[start : start + (1 if trickle else len(body))])
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            time.sleep(trickle)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # noqa: ANN201
    monkeypatch.setenv("SMOLTUNE_HOME", str(tmp_path / "home"))
    handler = type("Handler", (Scripted,), {"script": [], "requests": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/rows.jsonl"
    server.shutdown()
    server.server_close()


def good_body() -> bytes:
    return "".join(json.dumps(r) + "\n" for r in generate_rows(40, seed=3)).encode()


def test_a_404_fails_at_once_without_retries(
    prefect_server: None, tiny_model_dir: Path, tmp_path: Path, scripted
) -> None:
    handler, url = scripted
    handler.script = [(404, b"nope", 0)]
    code, output = smoltune(*job(tiny_model_dir, tmp_path, f"data.source={url}"))
    assert code == SOURCE
    assert_one_clean_error(output, "HTTP 404")
    assert handler.requests == 1  # no tenacity retry, no Prefect task retry


def test_an_oversized_body_is_refused(prefect_server: None, tiny_model_dir: Path, tmp_path: Path, scripted) -> None:
    handler, url = scripted
    handler.script = [(200, good_body(), 0)]
    code, output = smoltune(*job(tiny_model_dir, tmp_path, f"data.source={url}", "data.max_download_mb=0.001"))
    assert code == SOURCE
    assert_one_clean_error(output, "data.max_download_mb")
    assert not list((tmp_path / "home" / "downloads").glob("*.jsonl"))  # nothing half-written kept


def test_a_trickling_server_hits_the_deadline(
    prefect_server: None, tiny_model_dir: Path, tmp_path: Path, scripted
) -> None:
    handler, url = scripted
    handler.script = [(200, b'{"instruction": "x", "output": "y"}\n' * 10, 0.2)]
    started = time.monotonic()
    code, output = smoltune(*job(tiny_model_dir, tmp_path, f"data.source={url}", "data.download_timeout_s=2"))
    assert code == SOURCE
    assert_one_clean_error(output, "data.download_timeout_s")
    assert time.monotonic() - started < 60


def test_a_sha256_mismatch_is_not_retried(prefect_server: None, tiny_model_dir: Path, tmp_path: Path, scripted) -> None:
    handler, url = scripted
    handler.script = [(200, good_body(), 0)]
    code, output = smoltune(*job(tiny_model_dir, tmp_path, f"data.source={url}", f"data.sha256='{'0' * 64}'"))
    assert code == SOURCE
    assert_one_clean_error(output, "sha256 is", "data.sha256 pins")
    assert handler.requests == 1


def test_a_500_then_200_is_retried_once_trains_and_the_urls_token_is_never_written(
    prefect_server: None, tiny_model_dir: Path, tmp_path: Path, scripted
) -> None:
    """Two behaviours of one URL run (each case that trains costs ~50 s of the suite): one retry after a 500,
    and a secret in the URL's query kept out of every file and line the run writes."""
    handler, url = scripted
    handler.script = [(500, b"busy", 0), (200, good_body(), 0)]
    secret = "s3cr3t-value-123"
    code, output = smoltune(*job(tiny_model_dir, tmp_path, f"data.source={url}?token={secret}&v=1"))
    assert code == 0, output
    assert handler.requests == 2
    run_dir = Path(output.strip().splitlines()[-1])
    written = [p for p in run_dir.rglob("*") if p.is_file()] + [tmp_path / "runs" / "registry.json"]
    assert all(
        secret not in p.read_text(errors="ignore") for p in written if p.suffix in (".json", ".md", ".yaml", ".html")
    )
    assert secret not in output and "token=REDACTED" in (run_dir / "report.md").read_text()


# -- model, training, report ----------------------------------------------------------------------------


def test_unknown_lora_targets_fail_before_training(prefect_server: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    code, output = smoltune(*job(tiny_model_dir, tmp_path, "train.lora.target_modules=[q_proj, qkv_proj]"))
    assert code == MODEL
    assert_one_clean_error(output, "['qkv_proj'] match no module", "q_proj")
    assert not list((tmp_path / "runs" / "_cache").glob("train/*/checkpoints"))


def test_a_diverging_loss_stops_training_with_the_step(
    prefect_server: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    code, output = smoltune(*job(tiny_model_dir, tmp_path, "train.learning_rate=1e30", "train.max_steps=6"))
    assert code == TRAINING
    assert_one_clean_error(output, "training loss became", "at step", "lower train.learning_rate")


def test_html_in_prompts_is_text_in_the_report(prefect_server: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text('prompts:\n  - "<img src=x onerror=alert(1)> Say hi."\n')
    code, output = smoltune(*job(tiny_model_dir, tmp_path, f"eval.prompts_file={prompts}"))
    assert code == 0, output
    page = (Path(output.strip().splitlines()[-1]) / "report.html").read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


# -- faults ---------------------------------------------------------------------------------------------


def test_a_torn_cache_marker_is_recomputed(prefect_server: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    args = job(tiny_model_dir, tmp_path)
    assert smoltune(*args)[0] == 0
    [marker] = (tmp_path / "runs" / "_cache" / "prepare_dataset").glob("*/_complete.json")
    marker.write_text('{"tok')  # a crash mid-write on a filesystem without atomic rename
    code, output = smoltune(*args)
    assert code == 0, output
    assert json.loads(marker.read_text())["token"]  # recomputed and marked whole again


def test_a_full_disk_leaves_nothing_trusted_and_the_rerun_completes(
    prefect_server: None, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import smoltune.data.stage as stage
    from flows.finetune import finetune
    from smoltune.config import load_config

    real = stage.write_jsonl

    def full(path: Path, rows: list[dict]) -> Path:
        if Path(path).name == "eval.jsonl":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, rows)

    config = load_config("configs/smoke.yaml", tiny_overrides(tiny_model_dir, tmp_path / "runs"))
    monkeypatch.setattr(stage, "write_jsonl", full)
    with pytest.raises(OSError, match="No space left"):
        finetune(config=config)
    assert not list((tmp_path / "runs" / "_cache" / "prepare_dataset").glob("*/_complete.json"))
    monkeypatch.setattr(stage, "write_jsonl", real)
    assert (Path(finetune(config=config)) / "report.md").is_file()


def test_the_cli_says_the_disk_is_full_in_one_line() -> None:
    import typer

    from smoltune.cli import user_errors

    with pytest.raises(typer.Exit) as exit_, user_errors():
        raise OSError(errno.ENOSPC, "No space left on device", "/x/eval.jsonl")
    assert exit_.value.exit_code == 9
