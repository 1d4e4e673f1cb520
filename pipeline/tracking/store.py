"""The MLflow store: created once with its experiment, checked before any training, and its clients."""

import contextlib
import functools
import pathlib
import socket
import sqlite3
import urllib.error
import urllib.parse
import urllib.request

import mlflow

from pipeline import PipelineError
from pipeline.core.config import TrackingConfig
from pipeline.tracking import liveness

# MLflow 3's UI opens experiments of this kind on their training runs, not the GenAI overview.
_EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


class TrackingError(PipelineError):
    """The tracking store cannot be reached or written."""


class NotFoundError(PipelineError):
    """A run, sweep, registered model, alias or version that a command was pointed at is not in the store."""


def prepare(tracking_config: TrackingConfig) -> str:
    """Creates the store and the experiment if missing; returns the experiment id.

    Also makes tracking.uri MLflow's current URI: the fluent calls (mlflow.start_run, log_model,
    register_model) and `models:/` URIs resolve through it.

    Called once before a sweep's jobs start (hydra callback), since two processes creating a
    fresh SQLite store at once race in its schema migration; each job calls it again, cheaply.
    Every call also ends the runs, in any experiment of the store, of processes on this host that were
    killed hard (liveness.py).
    """
    uri = str(tracking_config.uri)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    elif uri.startswith("sqlite:///"):
        _check_sqlite(uri)
    elif "://" in uri and not uri.startswith("file:"):
        _check_database(uri)
    mlflow.set_tracking_uri(uri)
    store = client(uri)
    liveness.end_runs_of_dead_processes(store)
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


def ui_links(tracking_config: TrackingConfig, experiment_id: str, run_id: str | None = None,
             parent_run_id: str | None = None, order_by: tuple[str, bool] = ("eval/accuracy", False)
             ) -> tuple[str, str | None]:
    """The MLflow UI's page for a run, or for the experiment's runs in the Model-training view (with
    `parent_run_id`: that sweep's jobs in the chart view, ordered by the metric `order_by` names, ascending
    or not), and the command that serves the UI for a local store (None for a tracking server, which
    serves it itself).

    MLflow 3's UI picks its Model-training or GenAI view from the URL's workflowType (or the browser's
    last choice); it does not read the experiment's kind. It keeps its runs page's search filter, order
    and table or chart view in the URL too (searchFilter, orderByKey, compareRunsMode). It nests child
    runs under their collapsed parent unless a filter is set and the order is not by start time, so the
    link sets both: the sweep's jobs are then listed and charted themselves.
    """
    uri = str(tracking_config.uri)
    served = uri.startswith(("http://", "https://"))
    base = uri.rstrip("/") if served else "http://127.0.0.1:5000"
    page = f"runs/{run_id}" if run_id else "runs"
    query = {"workflowType": "machine_learning"}
    if parent_run_id:
        metric, ascending = order_by
        query |= {"searchFilter": f"tags.mlflow.parentRunId = '{parent_run_id}'", "orderByKey": f"metrics.`{metric}`",
                  "orderByAsc": str(ascending).lower(), "compareRunsMode": "CHART"}
    url = f"{base}/#/experiments/{experiment_id}/{page}?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}"
    return url, None if served else f"mlflow ui --backend-store-uri {uri}"


def client(uri: str | None = None) -> mlflow.MlflowClient:
    """The client of the store at `uri` (None: MLflow's current URI, which `prepare` sets)."""
    return _client(uri or mlflow.get_tracking_uri())


@functools.cache
def _client(uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(uri)


def _check_sqlite(uri: str) -> None:
    """The store's folder can be created; an existing file is an SQLite database holding an MLflow store."""
    path = pathlib.Path(uri.removeprefix("sqlite:///"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrackingError(f"tracking.uri={uri}: cannot create {path.parent} ({error.strerror}); "
                            "point tracking.uri at a writable folder") from error
    if not path.is_file() or path.stat().st_size == 0:
        return  # MLflow creates it
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as database:
            tables = {name for (name,) in database.execute("select name from sqlite_master where type='table'")}
    except sqlite3.DatabaseError as error:
        raise TrackingError(f"tracking.uri={uri}: {path} is not an SQLite database ({error}); point tracking.uri "
                            "at an MLflow store, or at a new file") from None
    if tables and not {"experiments", "runs"} <= tables:
        raise TrackingError(f"tracking.uri={uri}: {path} is an SQLite database but not an MLflow store (its "
                            f"tables: {', '.join(sorted(tables)[:5])}); point tracking.uri at an MLflow store, "
                            "or at a new file")


def _check_database(uri: str, timeout_s: float = 5.0) -> None:
    """Fails in seconds, naming the URI without its password, when the database server does not answer
    or refuses the connection; MLflow's own engine retries for minutes."""
    import sqlalchemy

    try:
        url = sqlalchemy.engine.make_url(uri)
    except sqlalchemy.exc.ArgumentError as error:
        raise TrackingError(f"tracking.uri={uri} is not a store URI ({error}); use sqlite:///<path>, "
                            "http(s)://host:port or a database URI such as postgresql+psycopg://...") from None
    shown = url.render_as_string(hide_password=True)
    port = url.port or _DEFAULT_PORTS.get(url.get_backend_name())
    if url.host and port:
        try:
            socket.create_connection((url.host, port), timeout=timeout_s).close()
        except OSError as error:
            raise TrackingError(f"tracking.uri={shown}: the database server does not answer ({error}); start it, "
                                "or check host and port") from None
    try:
        timeout_argument = _TIMEOUT_ARGUMENTS.get(url.get_backend_name())
        connect_args = {timeout_argument: max(1, round(timeout_s))} if timeout_argument else {}
        engine = sqlalchemy.create_engine(url, connect_args=connect_args)
        with engine.connect():
            pass
    except Exception as error:  # the driver's own error types: wrong user or password, no such database, no driver
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise TrackingError(f"tracking.uri={shown}: cannot connect ({reason}); check the user, password, database "
                            "name and driver (pip install -e '.[server]' for PostgreSQL)") from None


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
_TIMEOUT_ARGUMENTS = {"postgresql": "connect_timeout", "mysql": "connect_timeout"}  # the driver's, in whole seconds


def check_server(uri: str, timeout_s: float = 5.0) -> None:
    """Fails in seconds on an unreachable server; MLflow's own client retries for minutes."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(f"tracking.uri={uri} is unreachable ({reason}); start the MLflow server "
                            "or use the local store, tracking.uri=sqlite:///mlruns/mlflow.db") from error
