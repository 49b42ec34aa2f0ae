"""Training slots: how many trainings run at once on one machine (SMOLTUNE_TRAININGS_PER_MACHINE, default 1:
two trainings on the same cores distort each other's figures).

    prefect gcl ls                                             # the limits, their slots in use
    prefect gcl update smoltune-training-<host> --limit 2      # a 2-GPU host: two trainings at once

Under a Prefect server (PREFECT_API_URL set) a slot is one of a Prefect global concurrency limit named after
the machine, `smoltune-training-<host>`: the UI (Concurrency page) shows it and who holds it, its size can be
changed there (a change is kept: the setting only sizes a limit that does not exist yet), and a sweep spread
over N machines (flows/sweep.py on a Dask cluster) trains N points at once, one per machine. Slots are leased:
the server takes back a SIGKILLed holder's slot when its lease runs out (measured: 74 s with LEASE_S = 60).

Without a server (`smoltune run` on Prefect's temporary one) a slot is one of N file
locks in $SMOLTUNE_HOME: each run's temporary server keeps its leases in its own memory, so a killed run's
slot would never come back (measured: a new run waited its full limit), whereas the OS frees a file lock at once.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager

from smoltune.errors import BusyError, ConfigError
from smoltune.files import LOCK_POLL_S, LOCK_WAIT_S, smoltune_home, waiting_lock

PREFIX = "smoltune-training-"
SIZE_VARIABLE = "SMOLTUNE_TRAININGS_PER_MACHINE"
LEASE_S = 60.0  # a killed holder's slot comes back about a minute later; renewed while held
_log = logging.getLogger("smoltune")


def limit_name(host: str | None = None) -> str:
    """The limit of this machine (or `host`): letters, digits and dashes, as Prefect names are used in URLs."""
    slug = re.sub(r"[^a-z0-9-]+", "-", (host or socket.gethostname()).lower()).strip("-")
    return PREFIX + (slug or "localhost")


def slots_per_machine(env: dict[str, str] | None = None) -> int:
    """The size a new limit gets: SMOLTUNE_TRAININGS_PER_MACHINE, default 1."""
    raw = (os.environ if env is None else env).get(SIZE_VARIABLE, "1")
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError([f"{SIZE_VARIABLE}={raw!r}: a whole number of trainings at once, at least 1"])
    return int(raw)


def ensure_limit(name: str, size: int) -> None:
    """Create the limit `name` with `size` slots unless it exists (then its size, maybe set in the UI, stays)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=size))
            except ObjectAlreadyExists:
                pass  # another run created it a moment ago


def server_configured() -> bool:
    """True when runs report to a Prefect server (PREFECT_API_URL), not to a temporary one of their own."""
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def machine_slot(limit_s: float | None = None, poll_s: float = LOCK_POLL_S) -> AbstractContextManager:
    """One of this machine's SMOLTUNE_TRAININGS_PER_MACHINE file-lock slots."""
    home = smoltune_home()
    home.mkdir(parents=True, exist_ok=True)
    size = slots_per_machine()
    what = "this machine's training slot" + (f" (one of {size})" if size > 1 else " (one training at a time)")
    return waiting_lock(home / "training.lock", what, limit_s, poll_s, slots=size)


@contextmanager
def training_slot(limit_s: float | None = None, poll_s: float = LOCK_POLL_S) -> Iterator[str]:
    """Hold a training slot while the block runs (yields the limit's name): the machine's Prefect concurrency
    limit under a server, else a file-lock slot. Logs every `poll_s` while waiting; BusyError after `limit_s`
    (default SMOLTUNE_LOCK_WAIT_S)."""
    name = limit_name()
    if not server_configured():
        with machine_slot(limit_s, poll_s):
            yield name
        return
    with prefect_slot(name, LOCK_WAIT_S if limit_s is None else limit_s, poll_s):
        yield name


@contextmanager
def prefect_slot(name: str, limit_s: float, poll_s: float) -> Iterator[None]:
    """One slot of the global concurrency limit `name` (created with this machine's size if missing)."""
    from prefect.concurrency.sync import concurrency

    ensure_limit(name, slots_per_machine())
    acquired, started = threading.Event(), time.monotonic()

    def report_waiting() -> None:
        while not acquired.wait(poll_s):
            _log.warning("waiting for a training slot of %s: %.0f s so far", name, time.monotonic() - started)

    threading.Thread(target=report_waiting, name="slot-wait", daemon=True).start()
    with ExitStack() as held:
        try:
            held.enter_context(concurrency(name, occupy=1, timeout_seconds=limit_s, lease_duration=LEASE_S))
        except TimeoutError:
            raise BusyError(
                f"waited {time.monotonic() - started:.0f} s for a training slot of {name}, whose slots other "
                f"runs hold; see `prefect gcl inspect {name}`, or raise its limit"
            ) from None
        finally:
            acquired.set()
        yield
