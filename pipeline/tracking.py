"""Everything that talks to MLflow: the store, one run per job, params, metrics and models."""

import contextlib
import logging
import pathlib
import signal
import threading
import time
import urllib.error
import urllib.request

import mlflow
from mlflow.entities import Metric, Param, RunStatus
from omegaconf import DictConfig, OmegaConf

from pipeline import PipelineError

logger = logging.getLogger(__name__)

# MLflow 3's UI opens experiments of this kind on their training runs, not the GenAI overview.
_EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
_LOG_BATCH_LIMIT = 1000  # metrics per log_batch call, MLflow's own cap


class TrackingError(PipelineError):
    """The tracking store cannot be reached or written."""


class JobTerminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so the run ends KILLED rather than left RUNNING."""


def prepare_store(tracking_config) -> str:
    """Creates the store and the experiment if missing; returns the experiment id.

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
def start_run(tracking_config, run_name: str, tags: dict[str, str], resume_run_id: str | None = None):
    """One MLflow run for one job, ended FINISHED, FAILED (with the error as a tag) or KILLED.

    With `resume_run_id`, reopens that run (its tags and params stay as first logged).

    Raises:
        TrackingError: the run to resume does not exist or already finished.
    """
    experiment_id = prepare_store(tracking_config)
    if resume_run_id:
        run = _reopen(tracking_config, resume_run_id)
    else:
        tags = tags | {"version.mlflow": mlflow.__version__}
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags)
    restore_sigterm = _raise_on_sigterm()
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as error:
        mlflow.set_tag("error", _describe(error))
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))
    finally:
        restore_sigterm()


def _reopen(tracking_config, run_id: str):
    try:
        previous = mlflow.MlflowClient(tracking_config.uri).get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        raise TrackingError(f"train.resume={run_id}: no such run in {tracking_config.uri}") from error
    if previous.info.status == "FINISHED":
        raise TrackingError(f"train.resume={run_id}: that run already FINISHED; nothing to resume")
    mlflow.start_run(run_id=run_id)
    return mlflow.get_run(run_id)


def record_failed_run(config: DictConfig, run_name: str, tags: dict[str, str], error: Exception) -> None:
    """A FAILED run for a job that failed before its run could start (a bad config in a sweep)."""
    tracking_config = config.tracking
    client = mlflow.MlflowClient(tracking_config.uri)
    run = client.create_run(prepare_store(tracking_config), run_name=run_name,
                            tags=tags | {"error": _describe(error)})
    params = _config_params(OmegaConf.to_container(config, resolve=True, enum_to_str=True))
    client.log_batch(run.info.run_id, params=[Param(key, value) for key, value in params.items()])
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))


def log_config(config: DictConfig, overrides: list[str]) -> None:
    """The resolved config as dotted params (precision.policy, data.batch_size, ...) and as files."""
    resolved = OmegaConf.to_container(config, resolve=True, enum_to_str=True)
    mlflow.log_params(_config_params(resolved))
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
    """Logs the served model and the Keras model behind it; returns the served model's URI.

    `model` (pyfunc): the exported SavedModel behind input checks (pipeline/serving.py), with
    signature and input example: what is registered and served. `keras_model`: the same network
    as a Keras model, the reference that inference from the registry compares against.
    """
    import keras
    import numpy as np
    import tensorflow as tf
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from pipeline import serving

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *input_example.shape[1:]), "image")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, model.output_shape[-1]), "logits")]),
    )
    # Listing the requirements skips MLflow's inference of them, which re-imports the model in a
    # subprocess and costs tens of seconds per job.
    requirements = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}", f"mlflow=={mlflow.__version__}"]
    keras.config.disable_interactive_logging()  # MLflow's predict on the example would draw a progress bar
    served = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(pathlib.Path(serving.__file__).with_name("serving_model.py")),  # code, not a pickle
        artifacts={"saved_model": str(saved_model_dir)},
        code_paths=[str(pathlib.Path(serving.__file__).parent)],  # the pipeline package, so it loads anywhere
        signature=signature,
        input_example=input_example,
        pip_requirements=requirements,
    )
    mlflow.tensorflow.log_model(model, name="keras_model", signature=signature, pip_requirements=requirements)
    mlflow.log_artifacts(str(saved_model_dir), "serving_saved_model")  # browsable beside the run
    mlflow.set_tag("keras_model_uri", f"runs:/{mlflow.active_run().info.run_id}/keras_model")
    return served.model_uri


def load_logged_model(model_uri: str):
    """The Keras model logged beside `model_uri` and a local copy of the SavedModel it serves.

    The Keras model loads in Keras's safe mode (MLflow's default), which refuses to run code
    (Lambda layers) stored in a model file.
    """
    run_id = mlflow.models.get_model_info(model_uri).run_id
    keras_model = mlflow.tensorflow.load_model(f"runs:/{run_id}/keras_model")
    saved_model_dir = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="serving_saved_model")
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


def _config_params(resolved: dict) -> dict[str, str]:
    return {key: str(value) for key, value in flatten(resolved).items()}


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:5000]  # MLflow caps tag values


def _check_server(uri: str, timeout_s: float = 5.0) -> None:
    """Fails in seconds on an unreachable server; MLflow's own client retries for minutes."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(f"tracking.uri={uri} is unreachable ({reason}); start the MLflow server "
                            "or use the local store, tracking.uri=sqlite:///mlruns/mlflow.db") from error


def _raise_on_sigterm():
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handle(signum, frame):
        raise JobTerminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handle)
    return lambda: signal.signal(signal.SIGTERM, previous)
