"""`make bench-pipeline` (bench/pipeline_scaling.py): the generated rows, the growth fit, the plan, the reading of
the CLI's log, and the script end to end on the tiny llama."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from smoltune.data.builtin import builtin_dataset
from smoltune.data.split import row_key
from tests.tiny_model import tiny_overrides

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import pipeline_scaling as bench  # noqa: E402
import verdicts  # noqa: E402


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return builtin_dataset()


@pytest.mark.parametrize("count", [1, 2_440, 2_441, 52_000])
def test_rows_are_distinct_alpaca_rows_exactly_as_many_as_asked(base: list[dict], count: int) -> None:
    rows = bench.alpaca_rows(count, base)
    assert len(rows) == count
    assert all(set(r) == {"instruction", "input", "output"} for r in rows)
    assert all(isinstance(v, str) for r in rows for v in r.values())
    assert len({row_key(r) for r in rows}) == count  # the pipeline's own notion of "the same question"


def test_rows_start_as_the_built_in_rows_then_number_their_variants(base: list[dict]) -> None:
    rows = bench.alpaca_rows(len(base) * 2 + 1, base)
    assert rows[0] == {k: base[0][k] for k in ("instruction", "input", "output")}
    assert rows[len(base)]["instruction"] == f"{base[0]['instruction']} (variant 2)"
    assert rows[2 * len(base)]["instruction"] == f"{base[0]['instruction']} (variant 3)"
    assert rows[len(base)]["output"] == base[0]["output"]


def test_fit_recovers_a_line_and_its_exponent() -> None:
    fit = bench.fit_growth([1_000, 10_000, 52_000], [2.0 + 0.5e-3 * n for n in (1_000, 10_000, 52_000)])
    assert fit["a_s"] == pytest.approx(2.0)
    assert fit["b_s_per_1k_rows"] == pytest.approx(0.5)
    assert 0 < fit["exponent"] < 1  # a fixed cost flattens the log-log slope


def test_fit_exponent_of_power_laws() -> None:
    rows = [1_000, 10_000, 52_000]
    assert bench.fit_growth(rows, [3e-6 * n**2 for n in rows])["exponent"] == pytest.approx(2.0)
    assert bench.fit_growth(rows, [4e-3 * n for n in rows]) == pytest.approx(
        {"a_s": 0.0, "b_s_per_1k_rows": 4.0, "exponent": 1.0}, abs=1e-9
    )
    flat = bench.fit_growth(rows, [0.0, 0.0, 0.0])
    assert flat["exponent"] is None and flat["b_s_per_1k_rows"] == 0.0


def test_growth_fits_each_stage_and_the_whole_run_over_the_sizes_only() -> None:
    def run(kind: str, rows: int, train: float, total: float) -> dict:
        return {
            "kind": kind,
            "rows": rows,
            "stage_seconds": {"fetch_dataset": 1.0, "train": train},
            "run_seconds": total,
        }

    runs = [run("size", 1_000, 11.0, 30.0), run("size", 2_000, 12.0, 40.0), run("retrain", 2_000, 99.0, 99.0)]
    fits = bench.growth(runs)
    assert list(fits) == ["fetch_dataset", "train", "whole run"]
    assert fits["train"]["b_s_per_1k_rows"] == pytest.approx(1.0) and fits["train"]["a_s"] == pytest.approx(10.0)
    assert fits["whole run"]["b_s_per_1k_rows"] == pytest.approx(10.0)
    assert fits["fetch_dataset"]["exponent"] == pytest.approx(0.0)
    assert bench.growth(runs[:1]) == {}


def test_plan_fresh_folders_then_retrain_in_the_largest_then_held_out() -> None:
    runs = bench.plan([1_000, 52_000], 8, "0.0003", 10_000, 1_000)
    assert [(r.kind, r.rows, r.eval_rows) for r in runs] == [
        ("size", 1_000, 8),
        ("size", 52_000, 8),
        ("retrain", 52_000, 8),
        ("heldout", 10_000, 1_000),
    ]
    assert len({r.folder for r in runs}) == 3 and runs[2].folder == runs[1].folder
    assert runs[2].extra == ("train.learning_rate=0.0003",) and runs[0].extra == runs[3].extra == ()
    assert [r.kind for r in bench.plan([30, 60], 8, "0.0003", 60, 0)] == ["size", "size", "retrain"]


LOG = """\
09:38:19.607 | INFO    | prefect - Starting temporary server on http://127.0.0.1:8383
Calculating Metrics: 100%|##| 61/61 [00:00<00:00]09:38:39.525 | INFO    | Task run 'validate_dataset-82a' - \
Finished in state Cached(type=COMPLETED)
09:38:39.694 | INFO    | Task run 'prepare_dataset-3ef' - prepared 32 training and 8 held-out rows
09:38:39.701 | INFO    | Task run 'prepare_dataset-3ef' - Finished in state Completed()
23:59:59.900 | INFO    | Task run 'train-e08' - Finished in state Completed()
"""


def test_stage_states_read_from_the_prefect_log() -> None:
    assert bench.stage_states(LOG) == {
        "validate_dataset": ("Cached", "09:38:39.525"),
        "prepare_dataset": ("Completed", "09:38:39.701"),
        "train": ("Completed", "23:59:59.900"),
    }


def test_before_first_step_places_the_log_clock_on_the_runs_day() -> None:
    """Prefect's clock is local time; the training loop's start is UTC."""

    def local(*fields: int) -> dt.datetime:
        return dt.datetime(*fields).astimezone()

    def utc_iso(moment: dt.datetime) -> str:
        return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds")

    start, loop = local(2026, 12, 2, 9, 38, 10), local(2026, 12, 2, 9, 38, 49, 201_000)
    assert bench.before_first_step(utc_iso(loop), "09:38:39.701", start) == pytest.approx(9.5)
    late, loop = local(2026, 12, 2, 23, 59, 50), local(2026, 12, 3, 0, 0, 3)  # the stage starts after midnight
    assert bench.before_first_step(utc_iso(loop), "00:00:01.000", late) == pytest.approx(2.0)


def test_tables_name_every_stage_and_render_as_markdown() -> None:
    run = {
        "label": "1,000 rows",
        "stage_seconds": {"fetch_dataset": 1.25, "train": 20.0},
        "run_seconds": 40.0,
        "peak_rss_mb": 2048.0,
        "trainer_seconds": 12.5,
        "before_first_step_s": None,
        "reran": ["train"],
    }
    headers, rows = bench.runs_table([run])
    assert headers[:3] == ["run", "fetch_dataset", "train"]
    assert rows == [["1,000 rows", "1.25", "20.00", "40.0", "2,048 MiB", "12.5", "—", "train"]]
    text = bench.markdown(headers, rows)
    assert text.splitlines()[1] == "|" + "---|" * len(headers)
    assert text.splitlines()[2] == "| 1,000 rows | 1.25 | 20.00 | 40.0 | 2,048 MiB | 12.5 | — | train |"
    columns, fields = bench.transposed(headers, rows)
    assert columns == ["run", "1,000 rows"] and fields[1] == ["train", "20.00"] and len(fields) == len(headers) - 1


@pytest.mark.slow
def test_script_end_to_end_on_the_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Two sizes and the retrain (the held-out run skipped: it is the same code with other rows), 1 step each."""
    out = tmp_path / "pipeline.json"
    sets = [a for o in tiny_overrides(tiny_model_dir, tmp_path / "ignored") for a in ("--set", o)]
    command = [sys.executable, str(BENCH / "pipeline_scaling.py"), "--sizes", "30,60", "--steps", "1"]
    command += ["--model", str(tiny_model_dir), "--heldout-rows", "0", "--out", str(out), *sets]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-2000:]
    result = json.loads(out.read_text())
    sizes, retrain = result["runs"][:2], result["runs"][2]
    assert [r["kind"] for r in result["runs"]] == ["size", "size", "retrain"]
    assert all(r["machine"] == verdicts.machine_label() for r in result["runs"])
    # Each size's rows win over the tiny job's data.num_samples (--set first, the run's definition after); the
    # held-out rows are the job's (the tiny job's 6).
    assert [(r["train_rows"], r["eval_rows"]) for r in sizes] == [(24, 6), (54, 6)]
    for r in sizes:
        assert r["reran"] == list(r["stage_seconds"]) and "train" in r["stage_seconds"]  # fresh cache: all ran
        assert r["run_seconds"] > sum(r["stage_seconds"].values()) and r["peak_rss_mb"] > 100
        assert 0 < r["before_first_step_s"] < r["stage_seconds"]["train"] - r["trainer_seconds"] + 0.1
    assert retrain["reran"][:2] == ["train", "evaluate"] and "prepare_dataset" not in retrain["reran"]
    assert retrain["before_first_step_s"] > 0
    assert set(result["growth"]) == {*sizes[0]["stage_seconds"], "whole run"}
    assert "| stage | a (s) | b (s per 1k rows) | exponent |" in done.stdout
