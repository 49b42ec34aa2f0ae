"""Training slots: how many trainings run at once on one machine, held as a Prefect global concurrency limit
named after the machine, `smoltune-training-<host>`.

    prefect gcl ls                                             # the limits, their slots in use
    prefect gcl update smoltune-training-<host> --limit 2      # a 2-GPU host: two trainings at once

Why not a file lock: it keeps apart only the processes of one machine, nobody sees who holds it, and lifting
it needed an undocumented variable. The limit lives in the Prefect server: the UI (Concurrency page) shows it
and its holders, a sweep spread over N machines (flows/sweep.py on a Dask cluster) trains N points at once,
one per machine, and its size is a setting: SMOLTUNE_TRAININGS_PER_MACHINE (default 1) when a run first
creates it; once it exists the server's value wins, so a change made in the UI is not undone by the next run.
Slots are leased and the lease renewed while held: a SIGKILLed run frees its slot when the lease runs out.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from smoltune.errors import BusyError, ConfigError
from smoltune.files import LOCK_POLL_S, LOCK_WAIT_S

PREFIX = "smoltune-training-"
SIZE_VARIABLE = "SMOLTUNE_TRAININGS_PER_MACHINE"
LEASE_S = 60.0  # a killed holder's slot comes back within a minute; renewed every few seconds while held
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


@contextmanager
def training_slot(limit_s: float | None = None, poll_s: float = LOCK_POLL_S) -> Iterator[str]:
    """Hold one slot of this machine's training limit while the block runs (yields the limit's name); log
    every `poll_s` while waiting, and give up with BusyError after `limit_s` (default SMOLTUNE_LOCK_WAIT_S)."""
    from prefect.concurrency.sync import concurrency

    name, limit = limit_name(), LOCK_WAIT_S if limit_s is None else limit_s
    ensure_limit(name, slots_per_machine())
    started = time.monotonic()
    with ExitStack() as held:
        while True:
            wait = min(poll_s, max(limit - (time.monotonic() - started), 0.01))
            try:
                held.enter_context(concurrency(name, occupy=1, timeout_seconds=wait, lease_duration=LEASE_S))
                break
            except TimeoutError:
                waited = time.monotonic() - started
                if waited >= limit:
                    raise BusyError(
                        f"waited {waited:.0f} s for a training slot of {name}, whose slots other runs hold; "
                        f"see `prefect gcl inspect {name}`, or raise its limit"
                    ) from None
                _log.warning("waiting for a training slot of %s: %.0f s so far", name, waited)
        yield name
