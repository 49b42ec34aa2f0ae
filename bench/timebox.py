"""The benchmark's time box: each contender trains for at most its share of the budget, and one stopped at its box is
reported from its progress lines (bench/common.py) instead of its result file. Used by bench/run.py.

    python bench/run.py --budget-min 20            # the whole invocation within 20 minutes (the default)
    python bench/run.py --box-s 60                 # and no contender trains longer than 60 s

Why a box: speeds differ by 30x between machines (TRL's defaults train in emulated bf16 at ~4 tokens/s on an
AVX2-only CPU, ~130 on one with AMX), so a fixed number of steps takes minutes on one machine and hours on
another. Before each contender its box is the time left, less a reserve for loading every contender still to
run, shared evenly among them (`box_seconds`). A contender that has not begun training within the load
allowance, or has trained longer than its box, is stopped with its whole process group (SIGTERM, SIGKILL after
KILL_GRACE_S); its speed is what it reached until then. Whatever the end of a contender (its own exit, a crash, the
stop at its box), its group is ended the same way: workers or a server it started must not outlive it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

LOAD_ALLOWANCE_S = 240.0  # loading the model, tokenising, building the trainer: ~15-60 s measured on 2 cores
FIRST_LOAD_GUESS_S = 40.0  # what a contender spends outside training, until one has been measured
FINAL_RESERVE_S = 20.0  # the summary after the last contender, and the rows prepared for the second dataset
MIN_BOX_S = 5.0  # a contender whose share of the budget is gone still gets a few steps' worth, not zero
KILL_GRACE_S = 5.0  # between SIGTERM (smoltune's trainer stops at the step's end) and SIGKILL
POLL_S = 0.5


def box_seconds(left_s: float, runs_left: int, load_s: float, cap_s: float | None = None) -> float:
    """Training seconds for the next contender: the time left less `load_s` for each of the `runs_left`
    contenders (this one included), shared evenly; at most `cap_s` (the user's own box), at least MIN_BOX_S
    unless the user's box is smaller."""
    share = (left_s - runs_left * load_s) / max(runs_left, 1)
    box = max(MIN_BOX_S, share)
    return box if cap_s is None else min(box, cap_s)


def load_estimate(overheads_s: list[float]) -> float:
    """Seconds a contender spends outside training (start, load, save, exit): the mean of those measured so far,
    FIRST_LOAD_GUESS_S before any."""
    return sum(overheads_s) / len(overheads_s) if overheads_s else FIRST_LOAD_GUESS_S


@dataclass
class Budget:
    """The whole invocation's time: `total_s` from `started`; the overheads measured so far feed the reserve."""

    total_s: float
    cap_s: float | None = None
    started: float = field(default_factory=time.monotonic)
    overheads_s: list[float] = field(default_factory=list)

    def left_s(self) -> float:
        return self.total_s - (time.monotonic() - self.started)

    def next_box(self, runs_left: int) -> float:
        """The box of the next contender, `runs_left` counting it."""
        return box_seconds(self.left_s() - FINAL_RESERVE_S, runs_left, load_estimate(self.overheads_s), self.cap_s)

    def record(self, figures: dict) -> None:
        self.overheads_s.append(max(0.0, figures["process_seconds"] - (figures["seconds"] or 0.0)))


def read_progress(path: Path) -> list[dict]:
    """The complete lines of a progress file (a line still being written is left for the next read)."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def figures_from_progress(lines: list[dict], steps: int, stopped_after_s: float, peak_rss_mb: float | None) -> dict:
    """The figures of a contender stopped before it finished, from its progress lines: the real tokens/s it
    reached at its last finished micro-batch, the steps it completed, the losses it logged. `stopped_after_s`:
    seconds of training at the stop (of loading, when training never began); `peak_rss_mb`: the process's
    high-water mark read just before the stop."""
    begin = next((line for line in lines if line.get("event") == "begin"), None)
    batches = [line for line in lines if "tokens" in line]
    last = batches[-1] if batches else None
    done = last["step"] if last else 0
    step_done_at = next((line["t"] for line in batches if line["step"] == done), None) if done else None
    seconds = round(stopped_after_s, 1)
    if begin is None:
        reason = f"stopped after {seconds:.0f} s of loading, before training began: 0 of {steps} steps"
    elif last is None:
        reason = f"stopped after {seconds:.0f} s of training, before its first micro-batch finished: 0 of {steps} steps"
    else:
        reason = f"stopped after {seconds:.0f} s of training: {done} of {steps} steps"
    return {
        "finished": False,
        "reason": reason,
        "steps": done,
        "steps_planned": steps,
        "seconds": seconds if begin is not None else None,
        "tokens": last["tokens"] if last else 0,
        "tokens_per_second": round(last["tokens"] / last["t"], 2) if last and last["t"] > 0 else None,
        "seconds_per_step": round(step_done_at / done, 3) if step_done_at else None,
        "peak_rss_mb": None if peak_rss_mb is None else round(peak_rss_mb, 1),
        "peak_rss_kind": "high-water mark (VmHWM) read just before the stop",
        "losses": [line["loss"] for line in lines if "loss" in line],
        "precision": begin.get("precision") if begin else None,
    }


def high_water_mark_mb(pid: int) -> float | None:
    """The process's peak resident set (VmHWM) so far, from /proc; None where there is no /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kilobytes = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return None if kilobytes is None else kilobytes / 1024


@dataclass(frozen=True)
class Stopped:
    """What was known of a contender when it was stopped."""

    lines: list[dict]
    seconds: float  # of training, or of loading when it never began
    peak_rss_mb: float | None


def group_alive(pgid: int) -> bool:
    """Whether any live process of the group `pgid` is left. Zombies do not count: where nothing reaps orphans
    (the bench as PID 1 in a container without an init) they would stay until the end."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return not Path("/proc/self/stat").exists()  # no /proc (not Linux): killpg's answer


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process's group, SIGKILL after KILL_GRACE_S to whatever of the group is left (the trainer's
    own children too), and the process reaped. Its group outlives it: a contender that exited by itself leaves
    its children in the group (started with `start_new_session`, the group's id is the contender's pid)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_S
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=KILL_GRACE_S)
    # The children get the same grace as the contender (a server shutting down), not a SIGKILL at once.
    while group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def watch(process: subprocess.Popen, progress: Path, box_s: float | None, load_s: float | None) -> Stopped | None:
    """Poll `process` until it exits (None) or it has trained longer than `box_s` or not begun training within
    `load_s` (what it had done by then; the caller stops it)."""
    started = time.time()
    while process.poll() is None:
        lines = read_progress(progress)
        begun = next((line["time"] for line in lines if line.get("event") == "begin"), None)
        now = time.time()
        late = begun is None and load_s is not None and now - started > load_s
        if late or (begun is not None and box_s is not None and now - begun > box_s):
            return Stopped(lines, now - (started if begun is None else begun), high_water_mark_mb(process.pid))
        time.sleep(POLL_S)
    return None


def run_boxed(
    command: list[str], env: dict, progress: Path, box_s: float | None, load_s: float | None
) -> tuple[int, Stopped | None]:
    """Run `command` in its own process group until it exits, or stop it once it has trained longer than `box_s`
    or not begun training within `load_s` (None: no limit). Its exit status, and what it had done if stopped."""
    progress.unlink(missing_ok=True)
    process = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        stopped = watch(process, progress, box_s, load_s)
    finally:
        # Every end of a contender (its own exit, a crash, its box, the bench interrupted) ends its whole group:
        # dataloader workers or a server left behind would take the CPUs from the next contender.
        stop_group(process)
    return process.returncode, stopped
