"""Prefect settings that make a plain `smoltune run` work on a small, offline machine.

Called before Prefect is imported. Each is only a default: a value already in the environment wins.
"""

from __future__ import annotations

import logging
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


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs a failed task or flow with its traceback. For a SmoltuneError the message already says
    what to change and the traceback is noise (60 lines for a missing column): keep the line, drop the stack.
    Bugs (any other exception) keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from smoltune.errors import SmoltuneError

        if record.exc_info and isinstance(record.exc_info[1], SmoltuneError):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_user_error_tracebacks() -> None:
    """Install the filter on Prefect's run loggers (idempotent); `smoltune --debug` skips it."""
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTracebackForUserErrors) for f in logger.filters):
            logger.addFilter(_NoTracebackForUserErrors())


def use_hub_token(secret_block: str | None) -> None:
    """Make the Hugging Face token in the Prefect Secret block `secret_block` the process's HF_TOKEN, which
    huggingface_hub and datasets read; the token itself never enters a config, a log or a file."""
    if not secret_block:
        return
    from prefect.blocks.system import Secret

    from smoltune.errors import ConfigError

    try:
        token = Secret.load(secret_block).get()
    except ValueError as err:
        raise ConfigError([f"model.hub_token_secret: no Prefect Secret block {secret_block!r} ({err})"]) from None
    os.environ["HF_TOKEN"] = str(token)
