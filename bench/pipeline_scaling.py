"""How the whole pipeline scales with the data: `smoltune run` with the smoke job's settings (configs/smoke.yaml:
2 training steps, 8 held-out rows) on 1,000, 10,000 and 52,000 generated Alpaca rows (the seed notebook's dataset
has 51,760), each stage's seconds, the whole run's seconds and peak RSS, and each stage's fitted growth.

    make bench-pipeline                       # = python bench/pipeline_scaling.py
    python bench/pipeline_scaling.py --sizes 1000,10000 --heldout-rows 0 --out runs/bench/pipeline.json

Every run is the CLI as a user runs it, in its own process, one after the other. Each size runs in a fresh runs
folder, so a fresh cache and every stage runs. Then the largest size again with only `train.learning_rate`
changed (the "retrain on the same data" case: which stages reran, and the train stage's time before its first
step), and one run at 10,000 rows with 1,000 held-out rows, which times the held-out evaluation
(`--heldout-rows 0` skips it). Prefect: every run starts Prefect's temporary server, as `make smoke` does, with
its database in the work folder, migrated before the first timed run so that no run pays for it.

Stage seconds come from the run's summary.json (`stage_seconds`, the flow's StageTimer); the whole run and the
peak RSS of the CLI's process tree (CLI, Prefect server, training and evaluation workers; summed RSS, so pages
they share count more than once) are measured from here. Growth per stage, over the sizes: a least-squares fit
seconds = a + b x rows, and the slope of log seconds against log rows (1: linear, 0: a fixed cost). Prints a rich
table and the Markdown for docs/benchmarks.md, and writes JSON (--out); the run folders stay in the work folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import linear_regression
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs" / "smoke.yaml"
BIN = Path(sys.executable).parent
SIZES = (1_000, 10_000, 52_000)
HELDOUT_SIZE, HELDOUT_ROWS = 10_000, 1_000
# Prefect's console line for a finished task run, e.g.
# "09:38:39.701 | INFO    | Task run 'prepare_dataset-3ef' - Finished in state Completed()" (local time).
FINISHED = re.compile(r"(\d\d:\d\d:\d\d\.\d{3}) \| \w+ *\| Task run '(\w+)-\w+' - Finished in state (\w+)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="rows per run, comma-separated")
    parser.add_argument("--steps", type=int, help="training steps per run (default: the smoke job's)")
    parser.add_argument("--model", default="embedded", help="model.source: 'embedded' or a local model folder")
    parser.add_argument("--out", default="runs/bench/pipeline.json", help="where the figures go (JSON)")
    parser.add_argument(
        "--heldout-rows", type=int, default=HELDOUT_ROWS, help="held-out rows of the held-out run; 0 skips it"
    )
    parser.add_argument("--heldout-size", type=int, default=HELDOUT_SIZE, help="rows of the held-out run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="more job overrides")
    args = parser.parse_args()
    args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if args.heldout_rows and args.heldout_size <= args.heldout_rows:
        parser.error("--heldout-size must exceed --heldout-rows (the rest are the training rows)")
    return args


# -- pure: the rows, the plan, the figures ------------------------------------------------------------------------


def alpaca_rows(count: int, base: list[dict[str, str]]) -> list[dict[str, str]]:
    """`count` distinct Alpaca rows (instruction, input, output): `base`'s rows in order (they are distinct by
    instruction + input), then numbered variants of them ("... (variant 2)") once they are used up."""
    rows = []
    for index in range(count):
        row, copy = base[index % len(base)], index // len(base)
        instruction = row["instruction"] if copy == 0 else f"{row['instruction']} (variant {copy + 1})"
        rows.append({"instruction": instruction, "input": row["input"], "output": row["output"]})
    return rows


@dataclass(frozen=True)
class Planned:
    """One `smoltune run` of the benchmark."""

    label: str
    kind: str  # "size" (fitted), "retrain" (the largest size again, one setting changed) or "heldout"
    rows: int  # rows in the data file: training rows + held-out rows
    eval_rows: int
    folder: str  # its runs folder under the work folder (the cache is in it): the retrain reuses its size's
    extra: tuple[str, ...] = ()


def plan(sizes: list[int], eval_rows: int, retrain_lr: str, heldout_size: int, heldout_rows: int) -> list[Planned]:
    """Every size in a fresh folder; the largest again with only the learning rate changed; the held-out run."""
    runs = [Planned(f"{n:,} rows", "size", n, eval_rows, f"size-{n}") for n in sizes]
    top = max(sizes)
    extra = (f"train.learning_rate={retrain_lr}",)
    runs.append(Planned(f"{top:,} rows, new learning rate", "retrain", top, eval_rows, f"size-{top}", extra))
    if heldout_rows:
        label = f"{heldout_size:,} rows, {heldout_rows:,} held out"
        runs.append(Planned(label, "heldout", heldout_size, heldout_rows, f"heldout-{heldout_size}"))
    return runs


def stage_states(log: str) -> dict[str, tuple[str, str]]:
    """Task name -> (the state it finished in, e.g. Completed or Cached; the line's clock time), from the CLI's
    Prefect log."""
    return {name: (state, clock) for clock, name, state in FINISHED.findall(log)}


def before_first_step(started_at: str, stage_start_clock: str, run_started: dt.datetime) -> float:
    """Seconds from the train stage's start to its training loop's start (`TrainResult.started_at`, UTC): what
    the stage spends before its first step. Prefect's log gives only the local clock time of the line that marks
    the stage's start, so it is placed on the first such time at or after the run's start (`run_started`, aware)."""
    local = run_started.astimezone()
    clock = dt.time.fromisoformat(stage_start_clock)
    stamp = dt.datetime.combine(local.date(), clock, tzinfo=local.tzinfo)
    if stamp < local.replace(microsecond=0):
        stamp += dt.timedelta(days=1)  # the run crossed midnight
    return (dt.datetime.fromisoformat(started_at) - stamp).total_seconds()


def fit_growth(rows: list[int], seconds: list[float]) -> dict[str, float | None]:
    """Least squares seconds = a + b * rows (b given per 1,000 rows), and the exponent: the slope of log seconds
    against log rows (None when a stage took 0 s, whose log is undefined). Needs two sizes at least."""
    slope, intercept = linear_regression(rows, seconds)
    exponent = None
    if all(s > 0 for s in seconds):
        exponent = linear_regression([math.log(r) for r in rows], [math.log(s) for s in seconds]).slope
    return {"a_s": intercept, "b_s_per_1k_rows": slope * 1000, "exponent": exponent}


def growth(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """The fit of every stage, and of the whole run, over the sizes' runs ({} with fewer than two sizes)."""
    sized = [r for r in runs if r["kind"] == "size"]
    if len({r["rows"] for r in sized}) < 2:
        return {}
    stages = [s for s in sized[0]["stage_seconds"] if all(s in r["stage_seconds"] for r in sized)]
    rows = [r["rows"] for r in sized]
    fits = {s: fit_growth(rows, [r["stage_seconds"][s] for r in sized]) for s in stages}
    fits["whole run"] = fit_growth(rows, [r["run_seconds"] for r in sized])
    return {s: {k: None if v is None else round(v, 4) for k, v in fit.items()} for s, fit in fits.items()}


def runs_table(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: each run's stage seconds, whole run, peak RSS, trainer seconds, before the first step."""
    stages = list(dict.fromkeys(s for r in runs for s in r["stage_seconds"]))
    headers = ["run", *stages, "whole run", "peak RSS", "trainer", "before 1st step", "reran"]
    rows = []
    for r in runs:
        before = r["before_first_step_s"]
        reran = "all" if r["reran"] == list(r["stage_seconds"]) else ", ".join(r["reran"]) or "none"
        rows.append(
            [
                r["label"],
                *(f"{r['stage_seconds'][s]:.2f}" if s in r["stage_seconds"] else "—" for s in stages),
                f"{r['run_seconds']:.1f}",
                f"{r['peak_rss_mb']:,.0f} MiB",
                f"{r['trainer_seconds']:.1f}",
                "—" if before is None else f"{before:.1f}",
                reran,
            ]
        )
    return headers, rows


def growth_table(fits: dict[str, dict[str, float | None]]) -> tuple[list[str], list[list[str]]]:
    rows = [
        [s, f"{f['a_s']:.2f}", f"{f['b_s_per_1k_rows']:.3f}", "—" if f["exponent"] is None else f"{f['exponent']:.2f}"]
        for s, f in fits.items()
    ]
    return ["stage", "a (s)", "b (s per 1k rows)", "exponent"], rows


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


# -- running and measuring -----------------------------------------------------------------------------------------


def cli_env(prefect_home: Path) -> dict[str, str]:
    """The environment of every run: no Prefect API (each run starts the temporary server, as on a fresh
    machine), its database in the work folder."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {**env, "PREFECT_HOME": str(prefect_home)}


def tree_peak_rss(proc: subprocess.Popen, interval: float = 0.2) -> float:
    """Peak summed RSS (MiB) of `proc` and all its descendants, sampled every `interval` s until it exits.
    psutil because no library measures a process tree's peak: ru_maxrss gives one process's only."""
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        total = 0
        try:
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for member in members:
            try:
                total += member.memory_info().rss
            except psutil.Error:
                pass  # it exited between the listing and the reading
        peak = max(peak, total)
        time.sleep(interval)
    return peak / 2**20


def run_cli(overrides: list[str], env: dict[str, str], logs: Path) -> tuple[Path, float, float, str, dt.datetime]:
    """One `smoltune run` (stdout to logs.out, stderr to logs.log): its run folder, wall seconds, peak RSS
    (MiB), its Prefect log and when it started."""
    sets = [arg for o in overrides for arg in ("--set", o)]
    command = [str(BIN / "smoltune"), "run", "--config", str(SMOKE), *sets]
    out, log = logs.with_suffix(".out"), logs.with_suffix(".log")
    started_at = dt.datetime.now().astimezone()
    with out.open("w") as stdout, log.open("w") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=ROOT)
        peak = tree_peak_rss(proc)
        seconds = time.perf_counter() - started
    if proc.wait() != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"smoltune run failed (exit {proc.returncode}); its log: {log}\n{tail}")
    run_dir = Path(out.read_text().strip().splitlines()[-1])  # the CLI prints the run folder last
    return run_dir, seconds, peak, log.read_text(errors="replace"), started_at


def measure(planned: Planned, overrides: list[str], env: dict[str, str], logs: Path) -> dict[str, Any]:
    """Run `planned` and read its figures: the summary's stage seconds and training figures, which stages ran
    (not Cached), and the train stage's time before its first step."""
    run_dir, seconds, peak, log, started = run_cli(overrides, env, logs)
    summary = json.loads((run_dir / "summary.json").read_text())
    stage_seconds, train = summary["stage_seconds"], summary["train"]
    states = stage_states(log)
    reran = [s for s in stage_seconds if states.get(s, ("",))[0] != "Cached"]
    # The train stage starts as the stage before it finishes (the flow runs them one after the other).
    stages = list(stage_seconds)
    previous = stages[stages.index("train") - 1] if "train" in stages[1:] else None
    before = None
    if "train" in reran and previous in states and train.get("started_at"):
        before = round(before_first_step(train["started_at"], states[previous][1], started), 2)
    return {
        "label": planned.label,
        "kind": planned.kind,
        "rows": planned.rows,
        "train_rows": summary["data"]["train_rows"],
        "eval_rows": summary["data"]["eval_rows"],
        "stage_seconds": stage_seconds,
        "run_seconds": round(seconds, 2),
        "peak_rss_mb": round(peak, 1),
        "reran": reran,
        "trainer_seconds": train["train_seconds"],
        "before_first_step_s": before,
        "train_overhead_s": round(stage_seconds["train"] - train["train_seconds"], 2),
        "run_dir": str(run_dir),
        "overrides": overrides,
    }


def job_overrides(planned: Planned, args: argparse.Namespace, steps: int, rows_file: Path, runs_dir: Path) -> list[str]:
    """The user's --set first, then what defines the run (so it wins), then the run's own change."""
    return [
        *args.overrides,
        f"model.source={args.model}",
        f"data.source={rows_file}",
        f"data.num_samples={planned.rows - planned.eval_rows}",
        f"data.eval_samples={planned.eval_rows}",
        f"train.max_steps={steps}",
        f"output.runs_dir={runs_dir}",
        *planned.extra,
    ]


def transposed(headers: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """One column per run: what a terminal's width holds."""
    return [headers[0], *(row[0] for row in rows)], [[h, *(row[i] for row in rows)] for i, h in enumerate(headers) if i]


def report(result: dict[str, Any]) -> None:
    """The tables, in the terminal (rich) and as Markdown for docs/benchmarks.md."""
    from rich.console import Console
    from rich.table import Table

    tables = {"runs (seconds)": runs_table(result["runs"]), "growth": growth_table(result["growth"])}
    console = Console()
    for title, (headers, rows) in tables.items():
        headers, rows = transposed(headers, rows) if title.startswith("runs") else (headers, rows)
        table = Table(*headers, title=f"{title}: {result['header']}")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    print(f"\n{result['header']}\n")
    for headers, rows in tables.values():
        print(f"{markdown(headers, rows)}\n")


def run_plan(args: argparse.Namespace, steps: int, eval_rows: int, retrain_lr: str, work: Path) -> list[dict]:
    """Every planned run, one after the other, each size in a fresh runs folder; their figures."""
    from verdicts import machine_label

    from smoltune.data.builtin import builtin_dataset
    from smoltune.files import write_jsonl

    env = cli_env(work / "prefect")
    migrate = [str(BIN / "prefect"), "server", "database", "upgrade", "-y"]
    subprocess.run(migrate, env=env, check=True, capture_output=True)
    machine, base, files, runs = machine_label(), builtin_dataset(), {}, []
    for index, planned in enumerate(plan(args.sizes, eval_rows, retrain_lr, args.heldout_size, args.heldout_rows)):
        if planned.rows not in files:
            files[planned.rows] = write_jsonl(work / f"rows-{planned.rows}.jsonl", alpaca_rows(planned.rows, base))
        runs_dir = work / planned.folder
        if planned.kind != "retrain":
            shutil.rmtree(runs_dir, ignore_errors=True)  # a fresh cache: every stage runs
        print(f"--- {planned.label}", flush=True)
        overrides = job_overrides(planned, args, steps, files[planned.rows], runs_dir)
        runs.append(
            {"machine": machine, **measure(planned, overrides, env, work / "logs" / f"{index}-{planned.folder}")}
        )
    return runs


def main() -> None:
    args = parse_args()
    from verdicts import machine_label

    from smoltune.config import load_config

    smoke = load_config(SMOKE, args.overrides)
    steps = args.steps or smoke.train.max_steps
    # The CLI runs from the repository root (the job's relative paths): hand it absolute ones.
    if Path(args.model).exists():
        args.model = str(Path(args.model).resolve())
    out = Path(args.out).resolve()
    work = out.parent / f"{out.stem}-work"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    retrain_lr = f"{smoke.train.learning_rate * 1.5:g}"
    runs = run_plan(args, steps, smoke.data.eval_samples, retrain_lr, work)
    machine = machine_label()
    header = f"{dt.date.today().isoformat()}, {machine}, smoke job ({steps} steps), model {args.model}"
    result = {"header": header, "machine": machine, "steps": steps, "runs": runs, "growth": growth(runs)}
    out.write_text(json.dumps(result, indent=2))
    report(result)
    print(f"figures written to {out}")


if __name__ == "__main__":
    main()
