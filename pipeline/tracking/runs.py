"""One MLflow run per job: opened, ended in every case, and what the job logs into it."""

import contextlib
import signal
import threading
import time
import warnings

import mlflow
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from pipeline.core.config import TrackingConfig
from pipeline.tracking import liveness, store
from pipeline.tracking.store import TrackingError

_LOG_BATCH_LIMIT = 1000  # metrics per log_batch call, MLflow's own cap


class JobTerminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so the run ends KILLED rather than left RUNNING."""


@contextlib.contextmanager
def start_run(tracking_config: TrackingConfig, run_name: str, tags: dict[str, str],
              resume_run_id: str | None = None):
    """One MLflow run for one job, ended FINISHED, FAILED (with the error as a tag) or KILLED.

    With `resume_run_id`, reopens that run (its tags and params stay as first logged).

    Raises:
        TrackingError: the run to resume does not exist or already finished.
    """
    experiment_id = store.prepare(tracking_config)
    if tracking_config.system_metrics:
        mlflow.set_system_metrics_sampling_interval(tracking_config.system_metrics_interval)
        mlflow.set_system_metrics_samples_before_logging(1)
    if resume_run_id:
        run = _reopen(resume_run_id, tracking_config.system_metrics)
        mlflow.set_tags(liveness.process_tags())  # the process that runs it now
    else:
        tags = tags | {"version.mlflow": mlflow.__version__} | liveness.process_tags()
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags,
                               log_system_metrics=tracking_config.system_metrics)
    restore_sigterm = _raise_on_sigterm()
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as error:
        mlflow.set_tag("error", describe_error(error))
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))
    finally:
        restore_sigterm()


def _reopen(run_id: str, system_metrics: bool):
    try:
        previous = store.client().get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        raise TrackingError(f"train.resume={run_id}: no such run in {mlflow.get_tracking_uri()}") from error
    if previous.info.status == "FINISHED":
        raise TrackingError(f"train.resume={run_id}: that run already FINISHED; nothing to resume")
    mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics)
    return mlflow.get_run(run_id)


def record_failed_run(config: DictConfig, run_name: str, tags: dict[str, str], error: Exception) -> None:
    """A FAILED run for a job that failed before its run could start (a bad config in a sweep)."""
    experiment_id = store.prepare(config.tracking)
    client = store.client(config.tracking.uri)
    run = client.create_run(experiment_id, run_name=run_name, tags=tags | {"error": describe_error(error)})
    params = _config_params(OmegaConf.to_container(config, resolve=True, enum_to_str=True))
    client.log_batch(run.info.run_id, params=[Param(key, value) for key, value in params.items()])
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))


def log_config(config: DictConfig, overrides: list[str]) -> None:
    """The resolved config as dotted params (precision.policy, data.batch_size, ...) and as files."""
    resolved = OmegaConf.to_container(config, resolve=True, enum_to_str=True)
    mlflow.log_params(_config_params(resolved))
    mlflow.log_dict(resolved, "config/config.yaml")
    mlflow.log_dict({"overrides": list(overrides)}, "config/overrides.yaml")


def log_datasets(datasets) -> None:
    """The job's splits as MLflow dataset inputs (name, source, digest; context training, testing or
    validation), so the UI's Dataset column says what each run trained on."""
    import mlflow.data

    splits = [("training", "train", datasets.train), ("testing", "test", datasets.test)]
    if datasets.validation is not None:
        splits.append(("validation", "validation", datasets.validation))
    for context, split_name, split in splits:
        with warnings.catch_warnings():
            # MLflow registers its local-path source twice and warns that a path matches both; either is right.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            dataset = mlflow.data.from_numpy(split.images, targets=split.labels, source=datasets.source or None,
                                             name=f"{datasets.name}-{split_name}", digest=split.digest)
        _log_input(dataset, context)


def _log_input(dataset, context: str, attempts: int = 3) -> None:
    """mlflow.log_input, again when a parallel job of the sweep inserted the same dataset first.

    MLflow's SQL store looks the dataset up and then inserts it: two jobs of a joblib sweep logging the
    same split at once both miss it, and the later insert fails on the store's unique key. The row
    then exists, so logging again links this run to it."""
    for attempt in range(attempts):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except MlflowException as error:
            lost_race = any(text in str(error) for text in ("UNIQUE constraint", "duplicate key", "Duplicate entry"))
            if not lost_race or attempt == attempts - 1:
                raise


def log_artifacts(folder, artifact_path: str) -> None:
    """The files in `folder` on the active run, under `artifact_path`."""
    mlflow.log_artifacts(str(folder), artifact_path)


def log_metric_history(name: str, points: list[tuple[int, float]]) -> None:
    """Logs a metric's (step, value) points in as few store round trips as MLflow allows."""
    run_id = mlflow.active_run().info.run_id
    timestamp = int(time.time() * 1000)
    metrics = [Metric(name, float(value), timestamp, step) for step, value in points]
    for start in range(0, len(metrics), _LOG_BATCH_LIMIT):
        store.client().log_batch(run_id, metrics=metrics[start : start + _LOG_BATCH_LIMIT], synchronous=True)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({name: float(value) for name, value in metrics.items()}, step=step)


def set_tags(tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"data": {"batch_size": 64}} -> {"data.batch_size": 64}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def describe_error(error: BaseException) -> str:
    """An error as the `error` tag shows it: its type and message."""
    return f"{type(error).__name__}: {error}"[:5000]  # MLflow caps tag values


def _config_params(resolved: dict) -> dict[str, str]:
    return {key: str(value) for key, value in flatten(resolved).items()}


def _raise_on_sigterm():
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handle(signum, frame):
        raise JobTerminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handle)
    return lambda: signal.signal(signal.SIGTERM, previous)
