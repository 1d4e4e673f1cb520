"""Everything that talks to MLflow: the store, one run per job, params, metrics and models."""

import contextlib
import logging
import pathlib
import signal
import threading
import time

import mlflow
from mlflow.entities import Metric, RunStatus
from omegaconf import DictConfig, OmegaConf

logger = logging.getLogger(__name__)

# MLflow 3's UI opens experiments of this kind on their training runs, not the GenAI overview.
_EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
_LOG_BATCH_LIMIT = 1000  # metrics per log_batch call, MLflow's own cap
SWEEP_ID_TAG = "sweep.id"
SWEEP_ROLE_TAG = "sweep.role"
PARENT_RUN_TAG = "mlflow.parentRunId"  # what MLflow's UI nests child runs under


class JobTerminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so the run ends KILLED rather than left RUNNING."""


def prepare_store(tracking_config) -> str:
    """Creates the store and the experiment if missing; returns the experiment id.

    Called once before a sweep's jobs start (hydra callback), since two processes creating a
    fresh SQLite store at once race in its schema migration; each job calls it again, cheaply.
    """
    uri = str(tracking_config.uri)
    if uri.startswith("sqlite:///"):
        pathlib.Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(tracking_config.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if tracking_config.artifact_root and not uri.startswith(("http://", "https://")):
        artifact_root = pathlib.Path(tracking_config.artifact_root).resolve()
        artifact_location = (artifact_root / tracking_config.experiment).as_uri()
    try:
        return client.create_experiment(tracking_config.experiment, artifact_location, tags=_EXPERIMENT_TAGS)
    except mlflow.exceptions.MlflowException:
        # Another job created it between our look-up and create; use theirs.
        return client.get_experiment_by_name(tracking_config.experiment).experiment_id


@contextlib.contextmanager
def start_run(tracking_config, run_name: str, tags: dict[str, str]):
    """One MLflow run for one job, ended FINISHED, FAILED (with the error as a tag) or KILLED."""
    experiment_id = prepare_store(tracking_config)
    tags = tags | {"version.mlflow": mlflow.__version__}
    run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags)
    restore_sigterm = _raise_on_sigterm()
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as error:
        mlflow.set_tag("error", f"{type(error).__name__}: {error}"[:5000])
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))
    finally:
        restore_sigterm()


def start_sweep(tracking_config, sweep_id: str, sweep_overrides: list[str]) -> str:
    """Creates a sweep's parent run (left RUNNING until end_sweep) and returns its id."""
    experiment_id = prepare_store(tracking_config)
    client = mlflow.MlflowClient(tracking_config.uri)
    tags = {SWEEP_ID_TAG: sweep_id, SWEEP_ROLE_TAG: "parent", "sweep.overrides": " ".join(sweep_overrides)}
    run = client.create_run(experiment_id, run_name=f"sweep-{pathlib.Path(sweep_id).name}", tags=tags)
    return run.info.run_id


def find_sweep(tracking_config, sweep_id: str | None = None):
    """The parent run of sweep `sweep_id`, or of the latest sweep when None; None if there is none."""
    experiment_id = prepare_store(tracking_config)
    query = f"tags.`{SWEEP_ROLE_TAG}` = 'parent'"
    if sweep_id:
        query += f" and tags.`{SWEEP_ID_TAG}` = '{sweep_id}'"
    client = mlflow.MlflowClient(tracking_config.uri)
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def sweep_tags(tracking_config, sweep_id: str) -> dict[str, str]:
    """Tags that make a job's run a child of its sweep's parent run (just the sweep id if none)."""
    parent_run = find_sweep(tracking_config, sweep_id)
    tags = {SWEEP_ID_TAG: sweep_id}
    if parent_run is not None:
        tags[PARENT_RUN_TAG] = parent_run.info.run_id
    return tags


def sweep_jobs(tracking_config, parent_run) -> list:
    """The child runs of a sweep's parent run, oldest first."""
    client = mlflow.MlflowClient(tracking_config.uri)
    query = f"tags.`{PARENT_RUN_TAG}` = '{parent_run.info.run_id}'"
    return client.search_runs([parent_run.info.experiment_id], query, order_by=["attributes.start_time ASC"])


def log_report(tracking_config, parent_run_id: str, report_dir) -> None:
    """Logs a sweep's report files (tables, plots) on its parent run, under report/."""
    mlflow.MlflowClient(tracking_config.uri).log_artifacts(parent_run_id, str(report_dir), "report")


def end_sweep(tracking_config, parent_run_id: str, status: str) -> None:
    mlflow.MlflowClient(tracking_config.uri).set_terminated(parent_run_id, status)


def metric_history(tracking_config, run_id: str, name: str) -> list[tuple[int, float]]:
    client = mlflow.MlflowClient(tracking_config.uri)
    return [(point.step, point.value) for point in client.get_metric_history(run_id, name)]


def log_config(config: DictConfig, overrides: list[str]) -> None:
    """The resolved config as dotted params (precision.policy, data.batch_size, ...) and as files."""
    resolved = OmegaConf.to_container(config, resolve=True)
    params = {key: str(value) for key, value in flatten(resolved).items()}
    mlflow.log_params(params)
    mlflow.log_dict(resolved, "config/config.yaml")
    mlflow.log_dict({"overrides": list(overrides)}, "config/overrides.yaml")


def log_metric_history(name: str, points: list[tuple[int, float]]) -> None:
    """Logs a metric's (step, value) points in as few store round trips as MLflow allows."""
    run_id = mlflow.active_run().info.run_id
    timestamp = int(time.time() * 1000)
    metrics = [Metric(name, float(value), timestamp, step) for step, value in points]
    client = mlflow.MlflowClient()
    for start in range(0, len(metrics), _LOG_BATCH_LIMIT):
        client.log_batch(run_id, metrics=metrics[start : start + _LOG_BATCH_LIMIT], synchronous=True)


def log_metrics(metrics: dict[str, float]) -> None:
    mlflow.log_metrics({name: float(value) for name, value in metrics.items()})


def set_tags(tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)


def log_model(model, saved_model_dir, input_example) -> str:
    """Logs the Keras model (signature, input example) and the serving SavedModel; returns the model URI."""
    import keras
    import numpy as np
    import tensorflow as tf
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *input_example.shape[1:]), "image")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, model.output_shape[-1]), "logits")]),
    )
    # Listing the requirements skips MLflow's inference of them, which re-imports the model in a
    # subprocess and costs tens of seconds per job.
    keras.config.disable_interactive_logging()  # MLflow's predict on the example would draw a progress bar
    requirements = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}", f"mlflow=={mlflow.__version__}"]
    model_info = mlflow.tensorflow.log_model(
        model,
        name="model",
        signature=signature,
        input_example=input_example,
        pip_requirements=requirements,
    )
    mlflow.log_artifacts(str(saved_model_dir), "serving_saved_model")
    return model_info.model_uri


def load_logged_model(model_uri: str):
    """The Keras model behind `model_uri` and a local copy of the SavedModel exported with it."""
    model_info = mlflow.models.get_model_info(model_uri)
    keras_model = mlflow.tensorflow.load_model(model_uri)
    saved_model_dir = mlflow.artifacts.download_artifacts(run_id=model_info.run_id, artifact_path="serving_saved_model")
    return keras_model, saved_model_dir


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"data": {"batch_size": 64}} -> {"data.batch_size": 64}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _raise_on_sigterm():
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handle(signum, frame):
        raise JobTerminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handle)
    return lambda: signal.signal(signal.SIGTERM, previous)
