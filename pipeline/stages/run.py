"""The four stages in order for one job, each one's result passed explicitly to the next, and
each recorded in the job's MLflow run."""

import collections
import contextlib
import dataclasses
import json
import logging
import tempfile
import time

import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from pipeline import console
from pipeline.core import data, device, distribute, model, precision
from pipeline.stages import checkpoints, evaluate, export, infer, steps, train
from pipeline.tracking import models, registry, runs

logger = logging.getLogger("pipeline")


@dataclasses.dataclass
class JobResult:
    """What a job's summary shows: its headline figures and where its model went."""

    run_name: str
    accuracy: float | None = None
    examples_per_sec: float | None = None
    jit_compile: str | None = None
    peak_memory_mb: float | None = None
    latency_ms_p50: float | None = None
    registered: str | None = None  # "<name> version <n>", or why it was not registered


class Stopwatch:
    """Seconds per part of a job, logged as job/seconds/<part>: where a short job's time goes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def part(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def metrics(self) -> dict[str, float]:
        return {f"job/seconds/{name}": seconds for name, seconds in self.seconds.items()}


def run_stages(config: DictConfig, run_name: str, run_id: str, sweep_id: str | None,
               checkpoint_dir: str) -> JobResult:
    """Runs config.stages (a prefix of train, evaluate, export, infer) inside the active MLflow run.

    Args:
        config: the job's composed config.
        run_name: the job's name, for its progress line.
        run_id: the active run's id (a resumed run keeps its id).
        sweep_id: the sweep the job belongs to, or None.
        checkpoint_dir: where checkpoints go, and where a resumed run's latest one is read.
    """
    stopwatch = Stopwatch()
    try:
        return _run_stages(config, run_name, run_id, sweep_id, checkpoint_dir, stopwatch)
    finally:
        runs.log_metrics(stopwatch.metrics())  # also when a stage failed: where the time went


def _run_stages(config, run_name, run_id, sweep_id, checkpoint_dir, stopwatch: Stopwatch) -> JobResult:
    policy = str(config.precision.policy)
    with stopwatch.part("setup"):
        strategy = distribute.make_strategy(config.distribute)  # first: multi-worker needs it before any TF op
        supported, hardware_note = precision.hardware_support(
            policy, device.gpu_compute_capability(), device.read_cpu_flags())
        if not supported:
            logger.warning("%s", hardware_note)
        runs.set_tags(device.describe_device() | {
            "precision.hardware_supported": str(supported).lower(),
            "precision.hardware_note": hardware_note,
        } | distribute.describe(strategy, config.distribute))
    with stopwatch.part("data"):
        datasets = data.load_datasets(config.data)
        runs.log_datasets(datasets)
    with stopwatch.part("train"), contextlib.closing(console.Progress(run_name)) as progress:
        trained = _build_and_train(config, strategy, datasets, checkpoint_dir, log_metric=runs.log_metric_history,
                                   progress=progress)
        runs.log_metrics(trained.metrics())
        runs.set_tags(trained.tags())
    result = JobResult(run_name, examples_per_sec=trained.examples_per_sec, jit_compile=str(trained.jit.mode),
                       peak_memory_mb=trained.peak_memory_mb)
    if "evaluate" not in config.stages:
        return result
    with stopwatch.part("evaluate"):
        evaluated = evaluate.evaluate(trained.model, datasets)
        runs.log_metrics(evaluated.metrics())
        runs.log_confusion_matrix(evaluated.confusion)
    result.accuracy = evaluated.accuracy
    if "export" not in config.stages:
        return result
    with stopwatch.part("export"):
        exported = export.export(trained.model, config.export, config.model, policy, seed=config.train.seed,
                                 distributed=strategy is not None, calibration_split=datasets.train)
        runs.set_tags({"export.policy": exported.policy})
    if "infer" not in config.stages:
        return result
    with stopwatch.part("infer"):
        inferred = {"saved_model": infer.infer(exported.saved_model_dir, datasets.test, evaluated.logits,
                                               config.infer)}
        inferred |= {name: infer.infer_litert(path, datasets.test, evaluated.logits, config.infer)
                     for name, path in exported.litert_files.items()}
        runs.log_metrics({name: value for export_format, figures in inferred.items()
                          for name, value in figures.metrics(_metric_prefix(export_format)).items()})
    result.latency_ms_p50 = inferred["saved_model"].latency_ms_p50
    # Logged and registered last, so a job that fails in any stage registers nothing.
    with stopwatch.part("log_model"):
        example = data.normalize(datasets.test.images[:2]).numpy()
        model_uris = {"saved_model": models.log_model(exported.model, exported.saved_model_dir, example)}
        model_uris |= {name: models.log_litert_model(name, path, example)
                       for name, path in exported.litert_files.items()}
    with stopwatch.part("register"):
        registered = [_register(config, model_uris[name], run_id, sweep_id, policy, exported.policy, name,
                                evaluated.accuracy, figures) for name, figures in inferred.items()]
    result.registered = ", ".join(text for text in registered if text) or None
    return result


def _metric_prefix(export_format: str) -> str:
    return "infer" if export_format == "saved_model" else f"infer/{export_format}"


def _register(config, model_uri, run_id, sweep_id, policy, serving_policy, export_format, eval_accuracy,
              figures) -> str | None:
    """Registers a logged model if it passes the gate; returns what the summary says of it.

    The SavedModel is the trained model: its accuracy is the evaluate stage's; a LiteRT file is
    judged on its own accuracy over the test split.
    """
    accuracy = eval_accuracy if export_format == "saved_model" else figures.accuracy
    refusal = registry.gate(config.tracking, accuracy, figures.agreement, export_format)
    if refusal:
        logger.warning("%s (%s): not registered: %s", config.tracking.registered_model, export_format, refusal)
        runs.set_tags({"registry.skipped" if export_format == "saved_model" else f"registry.skipped.{export_format}":
                       refusal})
        return f"{export_format} not registered ({refusal})"
    if not config.tracking.registered_model:
        return None
    version = registry.register(model_uri, config.tracking.registered_model, {
        "precision.policy": policy, "export.policy": serving_policy, "export.format": export_format,
        "run_id": run_id, "data.batch_size": str(config.data.batch_size), "sweep.id": sweep_id or "",
    }, description=(
        f"{config.model.name} trained on {config.data.name} under {policy} (batch {config.data.batch_size}), "
        f"exported as {export_format} (serving policy {serving_policy}); eval accuracy {eval_accuracy:.4f}, "
        f"{export_format} accuracy {figures.accuracy:.4f}, export parity {figures.agreement:.4f}"
    ))
    return f"{config.tracking.registered_model} version {version}" + (
        f" ({export_format})" if export_format != "saved_model" else "")


def train_as_worker(config: DictConfig) -> None:
    """A non-chief worker's part of a multi-worker job: the same training steps, nothing logged.

    Every worker must take part in each step's all-reduce and in each checkpoint save (saving
    distributed variables is collective too); a worker's checkpoints go to a temporary folder,
    the chief's are the ones kept.
    """
    strategy = distribute.make_strategy(config.distribute)
    with tempfile.TemporaryDirectory(prefix="worker-checkpoints-") as checkpoint_dir:
        _build_and_train(config, strategy, data.load_datasets(config.data), checkpoint_dir, log_metric=None)


def _build_and_train(config: DictConfig, strategy, datasets: data.Datasets, checkpoint_dir: str,
                     log_metric: train.MetricSink | None, progress: train.ProgressSink | None = None,
                     ) -> train.TrainResult:
    """Builds the model and optimizer (restoring a checkpoint to resume) and trains."""
    policy = str(config.precision.policy)
    if config.train.deterministic:
        # Process-wide and irreversible in TensorFlow: later jobs of a basic-launcher sweep stay deterministic.
        tf.config.experimental.enable_op_determinism()
    with distribute.reporting_lost_workers(config.distribute):
        untrained, optimizer, calls = _trainer(config, policy, strategy)
        with distribute.scope(strategy):
            checkpointer = checkpoints.Checkpointer(untrained, optimizer, checkpoint_dir,
                                                    config.train.checkpoint_every_steps)
        start_step = checkpointer.restore_latest() if config.train.resume else 0
        return train.train(untrained, datasets, config.train, policy, log_metric=log_metric, optimizer=optimizer,
                           start_step=start_step, on_steps_done=checkpointer.save_if_due, strategy=strategy,
                           progress=progress, calls=calls)


_TRAINERS_KEPT = 8  # models (with their compiled calls) kept per process: a sweep's distinct models and policies
_trainers: collections.OrderedDict[str, tuple] = collections.OrderedDict()


def _trainer(config: DictConfig, policy: str, strategy) -> tuple:
    """The job's model (its initial weights from train.seed), a fresh optimizer, and their compiled calls.

    A job that trains the same model under the same policy as an earlier job of this process takes
    that job's model and optimizer objects back, reset to this job's initial weights and a fresh
    optimizer state, with the calls compiled for them: a sweep's jobs then reuse compiled programs
    instead of adding new ones that TensorFlow never frees (steps.Calls). What is learned is the same:
    the same initial values, the same programs.
    """
    built = model.build_model(config.model, policy, seed=config.train.seed, strategy=strategy)
    if strategy is not None:  # one job per process under a strategy: nothing to keep
        with distribute.scope(strategy):
            return built, steps.make_optimizer(policy, config.train.learning_rate), None
    key = json.dumps([OmegaConf.to_container(config.model, resolve=True), policy], sort_keys=True)
    if key not in _trainers:
        optimizer = steps.make_optimizer(policy, config.train.learning_rate)
        optimizer.build(built.trainable_variables)
        _trainers[key] = (built, optimizer, [variable.numpy() for variable in optimizer.variables],
                          steps.Calls(built, optimizer))
        while len(_trainers) > _TRAINERS_KEPT:
            _trainers.popitem(last=False)
        return built, optimizer, _trainers[key][3]
    _trainers.move_to_end(key)
    kept, optimizer, initial_state, calls = _trainers[key]
    kept.set_weights(built.get_weights())
    for variable, value in zip(optimizer.variables, initial_state):
        variable.assign(value)
    optimizer.learning_rate = config.train.learning_rate
    return kept, optimizer, calls
