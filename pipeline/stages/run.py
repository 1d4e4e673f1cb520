"""The four stages in order for one job, each one's result passed explicitly to the next, and
each recorded in the job's MLflow run."""

import dataclasses
import logging
import tempfile

import tensorflow as tf
from omegaconf import DictConfig

from pipeline.core import data, device, distribute, model, precision
from pipeline.stages import checkpoints, evaluate, export, infer, steps, train
from pipeline.tracking import models, registry, runs

logger = logging.getLogger("pipeline")


@dataclasses.dataclass
class JobResult:
    accuracy: float | None = None
    examples_per_sec: float | None = None

    def summary(self) -> str:
        accuracy = "-" if self.accuracy is None else f"{self.accuracy:.4f}"
        return f"eval accuracy {accuracy}, {self.examples_per_sec or 0:.0f} train examples/s"


def run_stages(config: DictConfig, run_id: str, sweep_id: str | None, checkpoint_dir: str) -> JobResult:
    """Runs config.stages (a prefix of train, evaluate, export, infer) inside the active MLflow run.

    Args:
        config: the job's composed config.
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
    datasets, trained = _build_and_train(config, strategy, checkpoint_dir, log_metric=runs.log_metric_history)
    runs.log_metrics(trained.metrics())
    runs.set_tags(trained.tags())
    result = JobResult(examples_per_sec=trained.examples_per_sec)
    if "evaluate" not in config.stages:
        return result
    evaluated = evaluate.evaluate(trained.model, datasets)
    runs.log_metrics(evaluated.metrics())
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
    # Logged and registered last, so a job that fails in any stage registers nothing.
    example = data.normalize(datasets.test.images[:2]).numpy()
    model_uri = models.log_model(exported.model, exported.saved_model_dir, example)
    if config.tracking.registered_model:
        registry.register(model_uri, config.tracking.registered_model, {
            "precision.policy": policy, "export.policy": exported.policy, "run_id": run_id,
            "data.batch_size": str(config.data.batch_size), "sweep.id": sweep_id or "",
        }, description=(
            f"{config.model.name} trained on {config.data.name} under {policy} (batch {config.data.batch_size}), "
            f"served under {exported.policy}; eval accuracy {evaluated.accuracy:.4f}, "
            f"export parity {inferred.agreement:.4f}"
        ))
    return result


def train_as_worker(config: DictConfig) -> None:
    """A non-chief worker's part of a multi-worker job: the same training steps, nothing logged.

    Every worker must take part in each step's all-reduce and in each checkpoint save (saving
    distributed variables is collective too); a worker's checkpoints go to a temporary folder,
    the chief's are the ones kept.
    """
    strategy = distribute.make_strategy(config.distribute)
    with tempfile.TemporaryDirectory(prefix="worker-checkpoints-") as checkpoint_dir:
        _build_and_train(config, strategy, checkpoint_dir, log_metric=None)


def _build_and_train(config: DictConfig, strategy, checkpoint_dir: str,
                     log_metric: train.MetricSink | None) -> tuple[data.Datasets, train.TrainResult]:
    """Loads the data, builds the model and optimizer (restoring a checkpoint to resume), trains."""
    policy = str(config.precision.policy)
    if config.train.deterministic:
        # Process-wide and irreversible in TensorFlow: later jobs of a basic-launcher sweep stay deterministic.
        tf.config.experimental.enable_op_determinism()
    datasets = data.load_datasets(config.data)
    with distribute.reporting_lost_workers(config.distribute):
        untrained = model.build_model(config.model, policy, seed=config.train.seed, strategy=strategy)
        with distribute.scope(strategy):
            optimizer = steps.make_optimizer(policy, config.train.learning_rate)
            checkpointer = checkpoints.Checkpointer(untrained, optimizer, checkpoint_dir,
                                                    config.train.checkpoint_every_steps)
        start_step = checkpointer.restore_latest() if config.train.resume else 0
        trained = train.train(untrained, datasets, config.train, policy, log_metric=log_metric,
                              optimizer=optimizer, start_step=start_step, on_steps_done=checkpointer.save_if_due,
                              strategy=strategy)
    return datasets, trained
