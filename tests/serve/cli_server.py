"""`smoltune serve` started in its own process on a free 127.0.0.1 port for a test module, its output in a log
file (a pipe nobody reads would block the server once full), printed at teardown so a failing test shows the
server's side. Stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import free_port


@contextmanager
def cli_server(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    cli = str(Path(sys.executable).parent / "smoltune")
    with log.open("w") as out:
        proc = subprocess.Popen([cli, "serve", "--port", str(port), *args], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
            assert proc.poll() is None, log.read_text()
        yield url, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        print(log.read_text()[-4000:])
