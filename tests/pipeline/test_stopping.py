"""The stop rule (smoltune.pipeline.stopping) on real Prefect runs, without a training: a task body that raises
StoppedError (as a signalled training does) ends its task run and its flow run Cancelled, the caller gets the
error with its signal, the stop is not cached (the rerun runs the body again and resumes), and a completed rerun
is cached as any stage is. tests/integration/test_signals.py checks the same states with a real SIGTERM."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest
from prefect import task
from prefect.cache_policies import INPUTS

from smoltune.errors import StoppedError
from smoltune.pipeline.stopping import cancelled_task_when_stopped, stoppable_flow, unless_stopped
from tests.prefect_runs import all_final, of_flow_run, task_runs

CALLS: list[int] = []


@task(cache_policy=INPUTS, persist_result=True, result_serializer="json")
@cancelled_task_when_stopped
def training(stop_first: int, job_id: str) -> dict:
    """Stops (like a signalled training) on its first `stop_first` calls, then completes. `job_id` keeps its
    cache key new for each test run (Prefect's result storage outlives the test session)."""
    CALLS.append(stop_first)
    if len(CALLS) <= stop_first:
        raise StoppedError(f"training stopped by SIGTERM at step {len(CALLS)}; a rerun resumes", 15)
    return {"steps": len(CALLS)}


@task
@cancelled_task_when_stopped
def never_stops(value: int) -> int:
    return value + 1


@stoppable_flow(name="stop-rule-test")
def job(stop_first: int, job_id: str) -> dict:
    return unless_stopped(training(stop_first, job_id))


def final_states(flow_run_id: UUID) -> tuple[str, list[tuple[str, str]]]:
    """The flow run's final state type and its task runs' (state type, state name), from the API, once every
    task run is final (tests/prefect_runs.py)."""
    from prefect.client.orchestration import get_client

    tasks = task_runs(of_flow_run(flow_run_id), all_final)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
    assert run.state is not None
    return run.state.type.value, [(t.state.type.value, t.state.name) for t in tasks if t.state]


def test_a_stopped_task_ends_task_and_flow_cancelled_and_is_not_cached(prefect_server: None) -> None:
    CALLS.clear()
    job_id = uuid4().hex
    stop_first = 2  # two stops in a row, then the rerun completes: each stop must rerun the body

    for attempt in range(1, stop_first + 1):
        state = job(stop_first, job_id, return_state=True)
        with pytest.raises(StoppedError, match=f"at step {attempt}") as raised:
            state.result()
        assert raised.value.signum == 15 and raised.value.exit_code == 143
        flow_state, tasks = final_states(state.state_details.flow_run_id)
        assert flow_state == "CANCELLED", flow_state
        assert tasks == [("CANCELLED", "Cancelled")], tasks
        assert len(CALLS) == attempt  # the stop before it was not read back from Prefect's cache

    assert job(stop_first, job_id) == {"steps": stop_first + 1}
    assert job(stop_first, job_id) == {
        "steps": stop_first + 1
    }  # the completed training is cached: the body did not run
    assert len(CALLS) == stop_first + 1


def test_a_task_that_does_not_stop_returns_its_value_through_the_rule(prefect_server: None) -> None:
    assert unless_stopped(never_stops(1)) == 2
    assert unless_stopped(3) == 3
