"""One MLflow run per job: opened, ended in every case, and what the job logs into it."""

import contextlib
import pathlib
import tempfile
import time
import warnings

import mlflow
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from pipeline import preemption
from pipeline.core.config import TrackingConfig
from pipeline.tracking import liveness, offline, store
from pipeline.tracking.store import TrackingError

_tracked: offline.TrackedRun | None = None  # the job's run while start_run holds it


@contextlib.contextmanager
def start_run(tracking_config: TrackingConfig, run_name: str, tags: dict[str, str],
              resume_run_id: str | None = None, offline_if_unreachable: bool = False):
    """One MLflow run for one job, ended FINISHED, FAILED (with the error as a tag) or KILLED (a signal:
    pipeline.preemption); yields its offline.TrackedRun (`.run` is the MLflow run).

    With `resume_run_id`, reopens that run (its tags and params stay as first logged). A tracking server
    that stops answering costs at most tracking.patience_s: the run goes on in the offline store. With
    `offline_if_unreachable` (a sweep's job, its sweep started on the server), a server that does not
    answer at the start means the offline store from the start.

    Raises:
        TrackingError: the store cannot be reached (and the job may not start offline), or the run to resume
            does not exist or already finished.
    """
    global _tracked
    # Resolved only here: tests compose configs outside a Hydra job, where ${hydra:...} has no value.
    offline_dir = OmegaConf.select(tracking_config, "offline_dir", throw_on_resolution_failure=False) or "offline"
    offline.apply_patience(tracking_config.patience_s)
    tags = tags | {"version.mlflow": mlflow.__version__} | liveness.process_tags()
    try:
        experiment_id = store.prepare(tracking_config)
    except TrackingError:
        if not (offline_if_unreachable and str(tracking_config.uri).startswith(("http://", "https://"))):
            raise
        _tracked = tracked = offline.TrackedRun(tracking_config, offline_dir, run_name=run_name, tags=tags)
    else:
        if tracking_config.system_metrics:
            mlflow.set_system_metrics_sampling_interval(tracking_config.system_metrics_interval)
            mlflow.set_system_metrics_samples_before_logging(1)
        if resume_run_id:
            run = _reopen(resume_run_id, tracking_config.system_metrics)
            mlflow.set_tags(liveness.process_tags())  # the process that runs it now
        else:
            run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags,
                                   log_system_metrics=tracking_config.system_metrics)
        _tracked = tracked = offline.TrackedRun(tracking_config, offline_dir, run)
    try:
        with preemption.handling_signals():
            try:
                yield tracked
            except preemption.JobStopped as stopped:
                where = f" at step {stopped.step}" if stopped.step is not None else ""
                tracked.log_batch(tags={liveness.REASON_TAG: f"{stopped.name}{where}"})
                tracked.end(RunStatus.to_string(RunStatus.KILLED))
                raise
            except KeyboardInterrupt:
                tracked.end(RunStatus.to_string(RunStatus.KILLED))
                raise
            except BaseException as error:
                tracked.log_batch(tags={"error": describe_error(error)})
                tracked.end(RunStatus.to_string(RunStatus.FAILED))
                raise
            else:
                tracked.flush()
                tracked.end(RunStatus.to_string(RunStatus.FINISHED))
    finally:
        _tracked = None


def stopping() -> None:
    """A signal stopped the job: the clean-up must not wait on a server that may be gone (pipeline.preemption
    gives it seconds), so the run goes offline now unless its server answers at once."""
    if _tracked is not None:
        _tracked.stopping()


def _reopen(run_id: str, system_metrics: bool):
    try:
        previous = store.client().get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        raise TrackingError(f"train.resume={run_id}: no such run in {mlflow.get_tracking_uri()}") from error
    if previous.info.status == "FINISHED":
        raise TrackingError(f"train.resume={run_id}: that run already FINISHED; nothing to resume")
    mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics)
    reason = previous.data.tags.get(liveness.REASON_TAG)
    if reason:  # the run goes on: why it stopped becomes history
        mlflow.set_tag("resumed.after", reason)
        store.client().delete_tag(run_id, liveness.REASON_TAG)
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
    _tracked.log_batch(params=_config_params(resolved))
    with tempfile.TemporaryDirectory(prefix="config-") as folder:
        for name, content in (("config.yaml", resolved), ("overrides.yaml", {"overrides": list(overrides)})):
            (pathlib.Path(folder) / name).write_text(OmegaConf.to_yaml(content))
        _tracked.log_artifacts(folder, "config")


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
    """Logs a dataset input, again when a parallel job of the sweep inserted the same dataset first.

    MLflow's SQL store looks the dataset up and then inserts it: two jobs of a joblib sweep logging the
    same split at once both miss it, and the later insert fails on the store's unique key. The row
    then exists, so logging again links this run to it."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    entity = DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])
    for attempt in range(attempts):
        try:
            if _tracked is None:  # a run of MLflow's own (a thread's), not a job's
                mlflow.log_input(dataset, context=context)
            else:
                _tracked.log_inputs([entity])
            return
        except MlflowException as error:
            lost_race = any(text in str(error) for text in ("UNIQUE constraint", "duplicate key", "Duplicate entry"))
            if not lost_race or attempt == attempts - 1:
                raise


def log_artifacts(folder, artifact_path: str) -> None:
    """The files in `folder` on the job's run, under `artifact_path`."""
    _tracked.log_artifacts(folder, artifact_path)


def log_metric_history(name: str, points: list[tuple[int, float]], synchronous: bool = False) -> None:
    """Logs a metric's (step, value) points through MLflow's queue: the training loop never waits on the store
    (synchronous=True waits for each batch: what the benchmark compares against)."""
    timestamp = int(time.time() * 1000)
    _tracked.log_batch([Metric(name, float(value), timestamp, step) for step, value in points],
                       synchronous=synchronous)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    timestamp = int(time.time() * 1000)
    _tracked.log_batch([Metric(name, float(value), timestamp, step or 0) for name, value in metrics.items()])


def set_tags(tags: dict[str, str]) -> None:
    _tracked.log_batch(tags=tags)


def with_model_store(action):
    """Runs `action` (MLflow's fluent calls: logging a model, registering) against the job's run, in the
    offline store when the server has gone away."""
    return _tracked.fluent(action)


def register_or_keep_pending(register, export_format: str, pending: dict):
    """Runs `register` (a registration on the server) and returns the version; with the server gone, registers
    nothing and records the registration as pending on the run (`pipeline.sync` makes it), returning None."""
    return _tracked.register_or_keep_pending(register, export_format, pending)


def flush() -> None:
    """At a stage's end: what the training loop queued reaches the store (or the offline store)."""
    _tracked.flush()


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
