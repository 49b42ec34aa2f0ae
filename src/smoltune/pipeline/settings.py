"""Prefect settings that make a plain `smoltune run` work on a small, offline machine.

Called before Prefect is imported. Each is only a default: a value already in the environment wins.
"""

from __future__ import annotations

import os

DEFAULTS = {
    # Without PREFECT_API_URL, Prefect starts a temporary local server; its first start migrates a fresh
    # SQLite database, which takes longer than the 20 s Prefect allows on a 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    # Telemetry cannot reach the internet here and only prints tracebacks.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def apply_prefect_defaults() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
