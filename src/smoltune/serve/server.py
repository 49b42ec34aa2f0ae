"""Run the API under uvicorn until SIGTERM or Ctrl-C, then drain: uvicorn stops accepting connections and waits
for the open ones (up to the drain timeout), then the engine finishes or ends what is still in flight, and the
process exits 0.

    smoltune serve --adapter tuned=runs/<run> & pid=$!; ...; kill -TERM $pid; wait $pid   # exit status 0
"""

from __future__ import annotations

import signal
from typing import Any

from smoltune.serve.api import ServeOptions, create_app
from smoltune.serve.metrics import ServeMetrics


def serve_until_signalled(
    engine: Any, options: ServeOptions, metrics: ServeMetrics, host: str, port: int, drain_timeout_s: float
) -> None:
    import uvicorn

    config = uvicorn.Config(
        create_app(engine, options, metrics),
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=drain_timeout_s,
    )
    # uvicorn re-raises the signal that stopped it once it has shut down, which would kill the process before the
    # engine drains (and exit 143); these handlers, restored by uvicorn before it re-raises, receive it instead.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.Server(config).run()
    engine.drain(drain_timeout_s)
