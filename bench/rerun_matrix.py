"""Which stages rerun for each kind of change, measured on the real seed job (configs/default.yaml).

    make rerun-matrix                   # about 45 minutes on 2 cores: several 60-step trainings
    python bench/rerun_matrix.py --set train.max_steps=5    # the same matrix on a shorter job

Every scenario runs the finetune flow in this process (a temporary Prefect server), in a fresh cache and
runs folder, starting from the state the previous scenario left. Code edits and a library upgrade are
simulated through `smoltune.pipeline.versions` (the bytes and versions it reads), exactly as a real edit would
look to it, so the repository is never modified. Writes runs/rerun-matrix/matrix.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from smoltune.pipeline.settings import apply_prefect_defaults

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.http_files: the same local HTTP server the tests use
STAGES = ("resolve_model", "fetch_dataset", "validate_dataset", "prepare_dataset", "train", "evaluate_base", "evaluate")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="job override")
    parser.add_argument("--out", default=str(ROOT / "runs" / "rerun-matrix"))
    return parser.parse_args()


def task_states(flow_run_id: object) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs}


def run_job(overrides: list[str]) -> tuple[list[str], float, Path]:
    from flows.finetune import finetune
    from smoltune.config import load_config

    started = time.perf_counter()
    state = finetune(config=load_config(ROOT / "configs" / "default.yaml", overrides), return_state=True)
    if not state.is_completed():
        raise RuntimeError(f"run failed: {state.message}")
    states = task_states(state.state_details.flow_run_id)
    return [s for s in STAGES if states.get(s) != "Cached"], time.perf_counter() - started, Path(state.result())


class Simulated:
    """Edits and upgrades as `smoltune.pipeline.versions` sees them."""

    def __init__(self) -> None:
        from smoltune.pipeline import versions

        self.versions, self.edited, self.upgraded = versions, set(), set()
        real_bytes, real_installed = versions._source_bytes, versions._installed
        versions._source_bytes = lambda p: real_bytes(p) + (b"\n#e" if self._edited(p) else b"")
        versions._installed = lambda d: real_installed(d) + (".post1" if d in self.upgraded else "")

    def _edited(self, path: Path) -> bool:
        return any(str(path).endswith(e) for e in self.edited)

    def edit(self, relative: str) -> None:
        self.edited.add(relative)
        self.versions.stage_code.cache_clear()

    def upgrade(self, dist: str) -> None:
        self.upgraded.add(dist)
        self.versions.stage_code.cache_clear()


def scenarios(work: Path, base: list[str], sim: Simulated, server: object) -> list[tuple[str, Callable, list[str]]]:
    """(change, what to do before the run, the run's overrides): each run keeps what the previous left."""
    from smoltune.data.builtin import builtin_dataset
    from smoltune.files import write_jsonl

    prompts = work / "eval_prompts.yaml"
    shutil.copy(ROOT / "configs" / "eval_prompts.yaml", prompts)
    job = [*base, f"eval.prompts_file={prompts}"]
    rows_file = work / "served" / "rows.jsonl"
    rows = builtin_dataset()
    local = work / "rows.jsonl"
    url = server.url("rows.jsonl")  # type: ignore[attr-defined]

    def adapter_of(run_dir: Path) -> None:
        shutil.rmtree((run_dir / "train" / "adapter").resolve())

    return [
        ("first run (empty cache)", lambda _: None, job),
        ("nothing", lambda _: None, job),
        ("eval prompts (same file, new content)", lambda _: prompts.write_text(f"{prompts.read_text()}  - Hi.\n"), job),
        ("train.learning_rate 2e-4 -> 3e-4", lambda _: None, [*job, "train.learning_rate=3e-4"]),
        ("a report module (report/markdown.py)", lambda _: sim.edit("src/smoltune/report/markdown.py"), job),
        ("data_checks/ (suite.py)", lambda _: sim.edit("data_checks/suite.py"), job),
        ("library version (peft)", lambda _: sim.upgrade("peft"), job),
        ("deleted adapter folder", adapter_of, job),
        ("data file (first use)", lambda _: write_jsonl(local, rows), [*job, f"data.source={local}"]),
        ("data file (same path, rows changed)", lambda _: write_jsonl(local, rows[1:]), [*job, f"data.source={local}"]),
        ("data at a URL (first use)", lambda _: write_jsonl(rows_file, rows[1:]), [*job, f"data.source={url}"]),
        ("data at a URL (unchanged)", lambda _: None, [*job, f"data.source={url}"]),
        ("data at a URL (content changed)", lambda _: drop_first_row(server, rows_file), [*job, f"data.source={url}"]),
    ]


def drop_first_row(server: object, rows_file: Path) -> None:
    server.replace(rows_file, rows_file.read_text().split("\n", 1)[1])  # type: ignore[attr-defined]


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| change | stages rerun | wall time |", "|---|---|---|"]
    lines += [f"| {r['change']} | {', '.join(r['rerun']) or '— (all Cached)'} | {r['seconds']:.0f} s |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    apply_prefect_defaults()
    from prefect.testing.utilities import prefect_test_harness
    from verdicts import machine_label

    from tests.http_files import FileServer

    work = Path(tempfile.mkdtemp(prefix="rerun-matrix-"))
    (work / "served").mkdir()
    base = [*args.overrides, f"output.runs_dir={work / 'runs'}"]
    results, last_run = [], None
    with prefect_test_harness(server_startup_timeout=180), FileServer(work / "served") as server:
        for change, before, overrides in scenarios(work, base, Simulated(), server):
            before(last_run)
            rerun, seconds, last_run = run_job(overrides)
            results.append({"change": change, "rerun": rerun, "seconds": round(seconds, 1)})
            print(f"{change}: {', '.join(rerun) or 'all Cached'} ({seconds:.0f} s)", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    job = " ".join(args.overrides) or "(as shipped)"
    header = f"Rerun matrix, {dt.date.today()}, {machine_label()}, seed job {job}"
    (out / "matrix.json").write_text(json.dumps({"header": header, "rows": results}, indent=2))
    (out / "matrix.md").write_text(markdown(results, header))
    print(markdown(results, header))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
