"""A job's run when its tracking server goes away: bounded patience, then a local store in the job's folder.

MLflow's HTTP client retries each request with back-off (minutes by default); tracking.patience_s
sets MLflow's own retry settings so that a request gives up within it. Training metrics go through
MLflow's asynchronous queue, so the training loop never waits on the server. What the job logs is
also kept in memory (params, tags, metrics, dataset inputs, small artifacts): when a call finds the
server unreachable, the job opens a local MLflow store in its output folder, writes the run there
from what it kept, and logs the rest of the job (models included) there. `python -m pipeline.sync`
uploads it to the server later, into the same run.
"""

import dataclasses
import datetime
import json
import logging
import os
import pathlib
import shutil
import tempfile
import time

import mlflow
from mlflow.entities import Metric, Param, RunTag

logger = logging.getLogger("pipeline")

SERVER_URI_TAG, SERVER_RUN_TAG, SINCE_TAG = "offline.server_uri", "offline.server_run_id", "offline.since"
PENDING_TAG_PREFIX = "registry.pending."  # + export format: a registration the job asked for, not yet made
STORE_FILE = "mlflow.db"
BATCH_LIMIT = 1000  # metrics per log_batch call, MLflow's own cap


def apply_patience(patience_s: float) -> None:
    """Sets MLflow's HTTP retry settings so that one request to an unreachable server gives up within
    `patience_s`: half of it for the back-off between tries (1, 2, 4 ... s), the rest for their timeouts."""
    retries = 0 if patience_s <= 0 else max(count for count in range(1, 8) if 2**count - 2 <= patience_s / 2)
    backoff_s = max(0, 2**retries - 2)
    os.environ.update({
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int((patience_s - backoff_s) / (retries + 1)))),
    })


def unreachable(error: BaseException) -> bool:
    """Whether `error` (or what caused it) says the server did not answer, after MLflow's retries."""
    import requests
    import urllib3

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (requests.ConnectionError, requests.Timeout, urllib3.exceptions.MaxRetryError,
                              ConnectionError, TimeoutError)):
            return True
        if any(text in str(error) for text in ("Max retries exceeded", "Connection refused", "Read timed out",
                                               "Connection aborted")):
            return True
        error = error.__cause__ or error.__context__
    return False


@dataclasses.dataclass
class Kept:
    """What the job logged so far, to write the whole run into the offline store."""

    params: dict[str, str] = dataclasses.field(default_factory=dict)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    metrics: list[Metric] = dataclasses.field(default_factory=list)
    inputs: list = dataclasses.field(default_factory=list)  # mlflow.entities.DatasetInput
    artifacts: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (local copy, artifact path)


class TrackedRun:
    """One job's run: on the tracking store while it answers; past tracking.patience_s without an answer
    from a server, in a local store under `offline_dir`, whole."""

    def __init__(self, tracking_config, offline_dir, run=None, run_name: str = "", tags: dict | None = None) -> None:
        """The job's `run`, or with run=None (its server unreachable when a sweep's job starts) a run that is
        offline from the start, named `run_name` with `tags`."""
        uri = str(tracking_config.uri)
        self.server_uri = uri if uri.startswith(("http://", "https://")) else None  # only a server goes away
        self.patience_s = tracking_config.patience_s
        self.experiment_name = tracking_config.experiment
        self.run = run  # the MLflow run as it started
        self.run_name = run.info.run_name if run else run_name
        self.server_run_id = self.run_id = run.info.run_id if run else None
        self.start_time = run.info.start_time if run else int(time.time() * 1000)
        self.offline_dir = pathlib.Path(offline_dir)
        self.offline_uri: str | None = None
        self.since: float | None = None
        self.kept = Kept(params=dict(run.data.params), tags=dict(run.data.tags)) if run else Kept(tags=dict(tags))
        self._copies = tempfile.TemporaryDirectory(prefix="kept-artifacts-")
        self._pending: list[tuple[float, object]] = []  # (when sent, MLflow's RunOperations) of async batches
        if run is None:
            self.go_offline(time.time(), "no answer when the job started")

    def client(self) -> mlflow.MlflowClient:
        from pipeline.tracking import store

        return store.client(self.offline_uri or self.server_uri or mlflow.get_tracking_uri())

    def log_batch(self, metrics=(), params=None, tags=None, synchronous: bool = True) -> None:
        """Metrics, params and tags; with synchronous=False through MLflow's queue (the training loop's)."""
        params, tags, metrics = params or {}, tags or {}, list(metrics)
        self._check_pending()
        param_list = [Param(key, str(value)) for key, value in params.items()]
        tag_list = [RunTag(key, str(value)) for key, value in tags.items()]

        def keep():
            self.kept.params |= {key: str(value) for key, value in params.items()}
            self.kept.tags |= {key: str(value) for key, value in tags.items()}
            self.kept.metrics.extend(metrics)

        if not synchronous and self.since is not None and not self.offline_uri:
            keep()  # the server is gone: the offline store, made after the training loop, gets it
            return

        def send(client, run_id):
            queued = not synchronous and self.offline_uri is None
            operations = [client.log_batch(run_id, metrics=metrics[start:start + BATCH_LIMIT],
                                           params=param_list if start == 0 else [], tags=tag_list if start == 0 else [],
                                           synchronous=not queued)
                          for start in range(0, max(len(metrics), 1), BATCH_LIMIT)]
            if queued:
                self._pending += [(time.time(), operation) for operation in operations]

        self._send(send, keep)

    def log_inputs(self, inputs: list) -> None:
        self._send(lambda client, run_id: client.log_inputs(run_id, datasets=inputs),
                   lambda: self.kept.inputs.extend(inputs))

    def log_artifacts(self, folder, artifact_path: str) -> None:
        """The files in `folder` under `artifact_path`; a copy is kept (small files only: configs, plots)."""
        copy = pathlib.Path(self._copies.name) / str(len(self.kept.artifacts))
        shutil.copytree(folder, copy)
        self._send(lambda client, run_id: client.log_artifacts(run_id, str(copy), artifact_path),
                   lambda: self.kept.artifacts.append((str(copy), artifact_path)))

    def fluent(self, action):
        """Runs `action` (MLflow's fluent calls on the active run: logging a model, ending the run), again in the
        offline store if the server does not answer."""
        done, result = self._try_on_server(action)
        return result if done else action()

    def register_or_keep_pending(self, register, export_format: str, pending: dict):
        """Runs `register` (a registration on the server) and returns the version; with the server gone,
        registers nothing and records `pending` on the run for `pipeline.sync` to make, returning None."""
        done, version = self._try_on_server(register)
        if done:
            return version
        self.log_batch(tags={PENDING_TAG_PREFIX + export_format: json.dumps(pending)})
        return None

    def flush(self) -> None:
        """Waits for the queued batches (each within the patience); the server not answering means offline."""
        while self._pending and not self.offline_uri:
            sent, operations = self._pending.pop(0)
            try:
                operations.wait()
            except Exception as error:
                if not unreachable(error):
                    raise
                self.go_offline(sent)
        self._pending.clear()  # once offline, what the server did not take is in the offline run
        if self.since is not None:
            self.go_offline(self.since)

    def end(self, status: str) -> None:
        """Ends the run (here or in the offline store) and drops the kept copies."""
        self.fluent(lambda: mlflow.end_run(status))
        self._copies.cleanup()

    def stopping(self) -> None:
        """A signal ends the job within seconds: requests get a short patience, and a server that does not
        answer a health check at once means the offline store, without waiting for the queued batches."""
        apply_patience(min(self.patience_s, 2.0))
        if self.offline_uri or not self.server_uri:
            return
        if self.since is not None:
            self.go_offline(self.since)
            return
        from pipeline.tracking import store

        try:
            store.check_server(self.server_uri, timeout_s=2.0)
        except store.TrackingError:
            self.go_offline(min((sent for sent, _ in self._pending), default=time.time()),
                            "no answer to a health check while the job stops")

    def _check_pending(self) -> None:
        """Takes note of queued batches that failed, without waiting for any: the training loop calls it, so
        the offline store is made later, at the next call that waits (a stage's end)."""
        for sent, operations in [entry for entry in self._pending if _done(entry[1])]:
            self._pending.remove((sent, operations))
            if self.offline_uri:
                continue
            try:
                operations.wait()
            except Exception as error:
                if not unreachable(error):
                    raise
                self._note_unreachable(min(sent, self.since or sent))

    def _note_unreachable(self, since: float, why: str | None = None) -> None:
        """Says once that the server is gone, and since when."""
        if self.since is None:
            why = why or f"no answer within tracking.patience_s={self.patience_s:g}"
            logger.warning("tracking server %s unreachable since %s (%s); the job goes on and keeps its run in %s",
                           self.server_uri, clock(since), why, self.offline_dir)
        self.since = since if self.since is None else min(self.since, since)

    def _send(self, action, keep) -> None:
        """Sends to the store, and keeps what was sent (for an offline store made later)."""
        done, _ = self._try_on_server(lambda: action(self.client(), self.run_id))
        if not done:
            action(self.client(), self.run_id)  # the offline store's client and run now
        keep()

    def _try_on_server(self, action) -> tuple[bool, object]:
        """(True, what `action` returned) while the run is on its store; (False, None) once the run is offline,
        or has just gone offline because the server did not answer `action`."""
        if self.since is not None:  # noted during training
            self.go_offline(self.since)
        if self.offline_uri:
            return False, None
        if not self.server_uri:
            return True, action()
        sent = time.time()
        try:
            return True, action()
        except Exception as error:
            if not unreachable(error):
                raise
        self.go_offline(sent)
        return False, None

    def go_offline(self, since: float, why: str | None = None) -> None:
        """Opens the offline store, writes the run so far into it, and points MLflow's active run at it."""
        if self.offline_uri:
            return
        self._note_unreachable(since, why)
        since = self.since
        from pipeline import preemption

        with preemption.deferred():  # a signal now would leave a half-made store
            self.offline_dir.mkdir(parents=True, exist_ok=True)
            self.offline_uri = f"sqlite:///{(self.offline_dir / STORE_FILE).resolve()}"
            client = self.client()
            experiment = client.get_experiment_by_name(self.experiment_name)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(
                self.experiment_name, (self.offline_dir / "artifacts").resolve().as_uri())
            tags = self.kept.tags | {SERVER_URI_TAG: self.server_uri, SINCE_TAG: str(int(since))}
            if self.server_run_id:
                tags[SERVER_RUN_TAG] = self.server_run_id
            run = client.create_run(experiment_id, start_time=self.start_time, tags=tags, run_name=self.run_name)
            self.run_id = run.info.run_id
            client.log_batch(self.run_id, params=[Param(key, value) for key, value in self.kept.params.items()])
            for start in range(0, len(self.kept.metrics), BATCH_LIMIT):
                client.log_batch(self.run_id, metrics=self.kept.metrics[start:start + BATCH_LIMIT])
            if self.kept.inputs:
                client.log_inputs(self.run_id, datasets=self.kept.inputs)
            for copy, artifact_path in self.kept.artifacts:
                client.log_artifacts(self.run_id, copy, artifact_path)
            _make_active(self.offline_uri, self.run_id)

    def summary_line(self) -> str:
        """The job's last line after an outage: the server, since when, where the run is, how to upload it."""
        pending = sum(key.startswith(PENDING_TAG_PREFIX) for key in self.kept.tags)
        waiting = f"; {pending} model registration(s) pending" if pending else ""
        return (f"tracking server {self.server_uri} unreachable since {clock(self.since)}: run {self.run_name} "
                f"kept in {self.offline_dir}{waiting}; upload it with: python -m pipeline.sync {self.offline_dir}")


def _done(operations) -> bool:
    return all(future.done() for future in operations._operation_futures)  # MLflow's RunOperations keeps futures


def _make_active(uri: str, run_id: str) -> None:
    """MLflow's fluent calls (log_model, register_model, end_run) go to the offline run from now on.

    The server's run is dropped from MLflow's active-run stack without ending it there: ending it would
    wait on the server again. It stays RUNNING on the server until `pipeline.sync` ends it.
    """
    from mlflow.tracking import fluent

    fluent._active_run_stack.get().clear()  # noqa: SLF001  (no public call forgets a run without ending it)
    mlflow.set_tracking_uri(uri)
    mlflow.start_run(run_id=run_id)


def clock(timestamp: float | None) -> str:
    return datetime.datetime.fromtimestamp(timestamp or time.time()).strftime("%H:%M:%S")
