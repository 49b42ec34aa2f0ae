"""Reading task runs back from the Prefect API in tests. Task runs reach the API asynchronously after their flow
returns (a record was seen missing in CI right after a flow ended), so every reader polls until what it needs
is there, up to a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def task_runs(flow_runs: Any, ready: Callable[[list], bool], task_filter: Any = None, timeout_s: float = 30) -> list:
    """The task runs of the flow runs `flow_runs` (a FlowRunFilter) selects (and `task_filter`, a TaskRunFilter,
    if given), read every 0.5 s until `ready(runs)` or `timeout_s` has passed; then as they are."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=flow_runs, task_run_filter=task_filter)
        if ready(runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def of_flow_run(flow_run_id: Any) -> Any:
    """A FlowRunFilter for one flow run by id."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))


def all_final(runs: list) -> bool:
    return bool(runs) and all(run.state is not None and run.state.is_final() for run in runs)
