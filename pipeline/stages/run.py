"""The four stages in order for one job, each one's result passed explicitly to the next, and
each recorded in the job's MLflow run."""

import dataclasses
import logging
import tempfile

import tensorflow as tf
from omegaconf import DictConfig

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
    strategy = distribute.make_strategy(config.distribute)  # first: multi-worker needs it before any TF op
    policy = str(config.precision.policy)
    supported, hardware_note = precision.hardware_support(
        policy, device.gpu_compute_capability(), device.read_cpu_flags())
    if not supported:
        logger.warning("%s", hardware_note)
    runs.set_tags(device.describe_device() | {
        "precision.hardware_supported": str(supported).lower(),
        "precision.hardware_note": hardware_note,
    } | distribute.describe(strategy, config.distribute))
    datasets = data.load_datasets(config.data)
    runs.log_datasets(datasets)
    progress = console.Progress(run_name)
    try:
        trained = _build_and_train(config, strategy, datasets, checkpoint_dir, log_metric=runs.log_metric_history,
                                   progress=progress)
    finally:
        progress.close()
    runs.log_metrics(trained.metrics())
    runs.set_tags(trained.tags())
    result = JobResult(run_name, examples_per_sec=trained.examples_per_sec, jit_compile=str(trained.jit.mode),
                       peak_memory_mb=trained.peak_memory_mb)
    if "evaluate" not in config.stages:
        return result
    evaluated = evaluate.evaluate(trained.model, datasets)
    runs.log_metrics(evaluated.metrics())
    runs.log_confusion_matrix(evaluated.confusion)
    result.accuracy = evaluated.accuracy
    if "export" not in config.stages:
        return result
    exported = export.export(trained.model, config.export, config.model, policy, seed=config.train.seed,
                             distributed=strategy is not None)
    runs.set_tags({"export.policy": exported.policy})
    if "infer" not in config.stages:
        return result
    inferred = infer.infer(exported.saved_model_dir, datasets.test, evaluated.logits, config.infer)
    runs.log_metrics(inferred.metrics())
    result.latency_ms_p50 = inferred.latency_ms_p50
    # Logged and registered last, so a job that fails in any stage registers nothing.
    example = data.normalize(datasets.test.images[:2]).numpy()
    model_uri = models.log_model(exported.model, exported.saved_model_dir, example)
    refusal = registry.gate(config.tracking, evaluated.accuracy, inferred.agreement)
    if refusal:
        logger.warning("%s: not registered: %s", config.tracking.registered_model, refusal)
        runs.set_tags({"registry.skipped": refusal})
        result.registered = f"not registered ({refusal})"
    elif config.tracking.registered_model:
        version = registry.register(model_uri, config.tracking.registered_model, {
            "precision.policy": policy, "export.policy": exported.policy, "run_id": run_id,
            "data.batch_size": str(config.data.batch_size), "sweep.id": sweep_id or "",
        }, description=(
            f"{config.model.name} trained on {config.data.name} under {policy} (batch {config.data.batch_size}), "
            f"served under {exported.policy}; eval accuracy {evaluated.accuracy:.4f}, "
            f"export parity {inferred.agreement:.4f}"
        ))
        result.registered = f"{config.tracking.registered_model} version {version}"
    return result


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
        untrained = model.build_model(config.model, policy, seed=config.train.seed, strategy=strategy)
        with distribute.scope(strategy):
            optimizer = steps.make_optimizer(policy, config.train.learning_rate)
            checkpointer = checkpoints.Checkpointer(untrained, optimizer, checkpoint_dir,
                                                    config.train.checkpoint_every_steps)
        start_step = checkpointer.restore_latest() if config.train.resume else 0
        return train.train(untrained, datasets, config.train, policy, log_metric=log_metric, optimizer=optimizer,
                           start_step=start_step, on_steps_done=checkpointer.save_if_due, strategy=strategy,
                           progress=progress)
