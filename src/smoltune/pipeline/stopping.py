"""One stop rule for flows and their tasks: a training stopped on request - a pod stop, a Prefect cancellation,
Ctrl-C; `StoppedError`, a checkpoint saved - ends its task run and its flow run Cancelled, not Failed (a fault)
or Crashed (the infrastructure died), and the caller still gets the error (the CLI: exit 143/130, one line).

    @task(...)                                  @stoppable_flow(name="finetune")
    @cancelled_task_when_stopped                def finetune(config): ...
    def train_task(...): ...                        trained = unless_stopped(train_task(...))
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prefect.states import Cancelled, State

from smoltune.errors import StoppedError

P = ParamSpec("P")
R = TypeVar("R")


def stoppable_flow(**flow_kwargs: Any) -> Callable[[Callable[P, R]], Any]:
    """`@flow(**flow_kwargs)` over `cancelled_when_stopped(body)`, versioned as Prefect versions a flow (the hash
    of its own source file; the wrapper's file would give every flow the same version)."""

    def decorate(body: Callable[P, R]) -> Any:
        from prefect import flow
        from prefect.utilities.hashing import file_hash

        version = file_hash(str(inspect.getsourcefile(body)))
        return flow(version=version, **flow_kwargs)(cancelled_when_stopped(body))

    return decorate


def cancelled_when_stopped(body: Callable[P, R]) -> Callable[P, R | State]:
    """A flow body (under `@flow`) that stops on request returns Cancelled with the error as the state's data,
    so a caller asking for the result still gets it raised."""

    @functools.wraps(body)
    def run(*args: P.args, **kwargs: P.kwargs) -> R | State:
        try:
            return body(*args, **kwargs)
        except StoppedError as err:
            return Cancelled(message=str(err), data=err)

    # Prefect builds the flow's parameter schema (the UI's form) from the signature; the body's annotations are
    # strings naming its own module's imports, so they are resolved here, where those names are known.
    run.__signature__ = inspect.signature(body, eval_str=True)  # type: ignore[attr-defined]
    run.__annotations__ = typing.get_type_hints(body)
    return run


def cancelled_task_when_stopped(body: Callable[P, R]) -> Callable[P, R | State]:
    """A task body (under `@task`) that stops on request returns Cancelled: Prefect has no exception that ends a
    task run Cancelled (any exception is Failed), so the state is returned. A stop is not a result: it is kept
    out of Prefect's cache (the stage's transaction does not write it), so a rerun resumes the training rather
    than reading the stop back. Prefect hands a returned state to a direct caller as it is: call such a task
    through `unless_stopped`; a future's `.result()` raises the error itself."""

    @functools.wraps(body)
    def run(*args: P.args, **kwargs: P.kwargs) -> R | State:
        from prefect.transactions import get_transaction

        try:
            return body(*args, **kwargs)
        except StoppedError as err:
            if (transaction := get_transaction()) is not None:
                transaction.write_on_commit = False
            return Cancelled(message=str(err), data=err)

    return run


def unless_stopped(value: R | State) -> R:
    """A task's value, or the StoppedError its Cancelled state holds, raised (see `cancelled_task_when_stopped`)."""
    if isinstance(value, State):
        return value.result()  # raises the state's error: a Cancelled state is never returned as a value
    return value
