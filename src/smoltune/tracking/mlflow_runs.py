"""Log a finished run (and its nested runs) to MLflow, and register a promoted adapter in its model registry.

    mlflow server --host 127.0.0.1 --port 5000 &
    smoltune run --config configs/smoke.yaml --set tracking.mlflow_uri=http://127.0.0.1:5000

MLflow is imported only inside these functions (`import smoltune` stays fast, and MLflow is an optional
extra). An `MlflowClient` bound to the URI is used rather than MLflow's fluent API, whose active run and
tracking URI are process-wide state that concurrent Prefect tasks would share.

Tracking comes after the training it describes, so it never fails the run: a server that cannot be reached or
refuses a request ends in a `TrackingOutcome` whose `warning` says what was not logged and what to check; the
caller logs it. Settings that cannot work at all (an unknown scheme, MLflow not installed) are rejected up
front with the rest of the config (smoltune.config.tracking_problems).
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoltune.config import TrackingConfig, is_tracking_uri
from smoltune.redaction import redact
from smoltune.tracking.content import METRICS_PER_BATCH, PARAMS_PER_BATCH, TrackedRun, chunks

# A server that is down is found by one quick request instead of MLflow's own retries (7, with backoff:
# minutes of waiting at the end of a finished training).
HEALTH_TIMEOUT_S = 5.0
# A server that answers but fails requests (5xx) gets two retries, a few seconds, not MLflow's minutes; the run
# folder keeps everything, so giving up early loses nothing. Values already in the environment win.
RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
PARENT_RUN_TAG = "mlflow.parentRunId"  # how MLflow (and its UI) nests a run under another


@dataclass(frozen=True)
class TrackingOutcome:
    """Where the run went in MLflow; `warning` is set when it (or a part of it) was not logged."""

    run_id: str | None = None
    run_url: str | None = None
    model_version: str | None = None
    warning: str | None = None


def store_uri(mlflow_uri: str) -> str:
    """The MLflow tracking URI: a URI as given; a local folder as an SQLite store inside it."""
    if is_tracking_uri(mlflow_uri):
        return mlflow_uri
    return f"sqlite:///{Path(mlflow_uri).expanduser().resolve() / 'mlflow.db'}"


def _artifact_root(mlflow_uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside the SQLite store for a folder; the server decides else."""
    if is_tracking_uri(mlflow_uri):
        return None
    return (Path(mlflow_uri).expanduser().resolve() / "artifacts").as_uri()


def unreachable(uri: str, timeout_s: float = HEALTH_TIMEOUT_S) -> str | None:
    """Why nothing at `uri` can answer now: refused, unknown host, timed out (None: a server answered, or `uri`
    is no server). Any HTTP answer counts, even an error: a server behind authentication may guard /health
    too, and MLflow's own requests then say what is wrong."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


def _warning(tracking: TrackingConfig, run_name: str, reason: object) -> str:
    return redact(
        f"MLflow tracking failed, so run {run_name} is not (or only partly) in MLflow at {tracking.mlflow_uri}: "
        f"{reason}. The training and its run folder are complete; start the server (mlflow server) or fix "
        "tracking.mlflow_uri, then rerun (a rerun of a finished job is cached)."
    )


def track(tracking: TrackingConfig, run: TrackedRun, extra_tags: dict[str, str] | None = None) -> TrackingOutcome:
    """Log `run` and its children to `tracking.mlflow_uri`; register its weights under `tracking.register_model`
    when it was promoted. `extra_tags` go on every run (the Prefect flow-run URL). Never raises for MLflow or
    network errors: they come back as the outcome's warning."""
    if not tracking.mlflow_uri:
        return TrackingOutcome()
    uri = store_uri(tracking.mlflow_uri)
    reason = unreachable(uri)
    if reason:
        return TrackingOutcome(warning=_warning(tracking, run.name, reason))
    import requests
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        with _bounded_retries():
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            experiment_id = _experiment(client, tracking)
            logged = _RunLogger(client, experiment_id, tracking.register_model, extra_tags or {})
            run_id = logged.log(run)
    # MLflow's own errors (refusals, HTTP failures after retries), connection and file errors, and a database
    # URI whose driver is not installed (MLflow imports it on first use). Anything else is a bug: it raises.
    except (MlflowException, requests.RequestException, OSError, ImportError) as err:
        return TrackingOutcome(warning=_warning(tracking, run.name, err))
    # Shown as a Prefect link artifact: credentials in the URI must not be (the link still opens for a user
    # whose browser knows them).
    url = f"{redact(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}" if uri.startswith("http") else None
    return TrackingOutcome(run_id=run_id, run_url=url, model_version=logged.model_version)


@contextmanager
def _bounded_retries() -> Iterator[None]:
    """RETRY_DEFAULTS for the calls inside the block (MLflow reads them from the environment per request)."""
    added = {k: v for k, v in RETRY_DEFAULTS.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _experiment(client: Any, tracking: TrackingConfig) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(tracking.experiment)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(tracking.experiment, artifact_location=_artifact_root(tracking.mlflow_uri))
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(tracking.experiment).experiment_id  # made meanwhile by another run


class _RunLogger:
    """Logs a run tree through one client; remembers the registered version."""

    def __init__(self, client: Any, experiment_id: str, register_as: str | None, extra_tags: dict[str, str]):
        self.client, self.experiment_id = client, experiment_id
        self.register_as, self.extra_tags = register_as, extra_tags
        self.model_version: str | None = None

    def log(self, run: TrackedRun, parent_id: str | None = None) -> str:
        tags = run.tags | self.extra_tags | ({PARENT_RUN_TAG: parent_id} if parent_id else {})
        run_id = self.client.create_run(self.experiment_id, run_name=run.name, tags=tags).info.run_id
        try:
            self._log_content(run_id, run)
            for child in run.children:
                self.log(child, parent_id=run_id)
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")  # not left "running" forever in the UI
            raise
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def _log_content(self, run_id: str, run: TrackedRun) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        for batch in chunks([Param(k, v) for k, v in run.params.items()], PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=batch)
        curves = [Metric(key, value, now, step) for key, value, step in run.steps]
        for batch in chunks(curves, METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=batch)
        for path in run.files:
            self.client.log_artifact(run_id, path)
        model = self._log_weights(run_id, run) if run.weights_dir else None
        model_id = model.model_id if model else None
        # The final figures carry the logged model's id, so MLflow shows them on the model (and its version).
        final = [Metric(k, v, now, 0, model_id=model_id, run_id=run_id) for k, v in run.metrics.items()]
        for batch in chunks(final, METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=batch)
        if model and run.promoted and self.register_as:
            self._register(run_id, run, model)

    def _log_weights(self, run_id: str, run: TrackedRun) -> Any:
        """The adapter folder as an MLflow logged model of the run (MLflow 3's home for weights: shown on the run,
        registrable by id); its artifacts are the folder's files as they are, loadable with peft."""
        from mlflow.entities import LoggedModelOutput

        model = self.client.create_logged_model(
            self.experiment_id, name=run.weights_name, source_run_id=run_id, tags=run.tags
        )
        self.client.log_model_artifacts(model.model_id, str(run.weights_dir))
        self.client.finalize_logged_model(model.model_id, "READY")
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        return model

    def _register(self, run_id: str, run: TrackedRun, model: Any) -> None:
        """A new version of the registered model, with the run's figures and tags on it."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(self.register_as)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        # The logged model's artifact location, not models:/<id>: a local SQLite registry resolves models:/ URIs
        # through the process-wide tracking URI, which is not this client's.
        version = self.client.create_model_version(
            self.register_as,
            source=model.artifact_location,
            run_id=run_id,
            tags=run.tags | self.extra_tags | {k: f"{v:.6g}" for k, v in run.metrics.items()},
            description=run.tags.get("smoltune.promotion"),
            model_id=model.model_id,
        )
        self.model_version = str(version.version)
