"""The MLflow store: created once with its experiment, checked before any training, and its clients."""

import functools
import pathlib
import urllib.error
import urllib.request

import mlflow

from pipeline import PipelineError
from pipeline.config import TrackingConfig

# MLflow 3's UI opens experiments of this kind on their training runs, not the GenAI overview.
_EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


class TrackingError(PipelineError):
    """The tracking store cannot be reached or written."""


def prepare(tracking_config: TrackingConfig) -> str:
    """Creates the store and the experiment if missing; returns the experiment id.

    Also makes tracking.uri MLflow's current URI: the fluent calls (mlflow.start_run, log_model,
    register_model) and `models:/` URIs resolve through it.

    Called once before a sweep's jobs start (hydra callback), since two processes creating a
    fresh SQLite store at once race in its schema migration; each job calls it again, cheaply.
    """
    uri = str(tracking_config.uri)
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    elif uri.startswith("sqlite:///"):
        folder = pathlib.Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrackingError(f"tracking.uri={uri}: cannot create {folder} ({error.strerror}); "
                                "point tracking.uri at a writable folder") from error
    mlflow.set_tracking_uri(uri)
    store = client(uri)
    experiment = store.get_experiment_by_name(tracking_config.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if tracking_config.artifact_root and not uri.startswith(("http://", "https://")):
        artifact_root = pathlib.Path(tracking_config.artifact_root).resolve()
        artifact_location = (artifact_root / tracking_config.experiment).as_uri()
    try:
        return store.create_experiment(tracking_config.experiment, artifact_location, tags=_EXPERIMENT_TAGS)
    except mlflow.exceptions.MlflowException:
        # Another job created it between our look-up and create; use theirs.
        return store.get_experiment_by_name(tracking_config.experiment).experiment_id


def client(uri: str | None = None) -> mlflow.MlflowClient:
    """The client of the store at `uri` (None: MLflow's current URI, which `prepare` sets)."""
    return _client(uri or mlflow.get_tracking_uri())


@functools.cache
def _client(uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(uri)


def _check_server(uri: str, timeout_s: float = 5.0) -> None:
    """Fails in seconds on an unreachable server; MLflow's own client retries for minutes."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(f"tracking.uri={uri} is unreachable ({reason}); start the MLflow server "
                            "or use the local store, tracking.uri=sqlite:///mlruns/mlflow.db") from error
