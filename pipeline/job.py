"""One job of `python -m pipeline`, top to bottom: check the config (and read an IDX dataset), open the
job's MLflow run, load the data, build the model, then train, evaluate, export and infer, log and register
the model.

This is the one module that knows both the stages and MLflow: each stage returns its result, the
next takes what it needs explicitly, and what is recorded goes through pipeline.tracking here.
"""

import contextlib
import dataclasses
import logging
import pathlib
import tempfile
import time

from omegaconf import DictConfig, OmegaConf

from pipeline import console, preemption
from pipeline.core import config as config_lib
from pipeline.core import data, distribute

logger = logging.getLogger("pipeline")


@dataclasses.dataclass
class JobResult:
    """What a job's summary shows: its headline figures and where its model went."""

    run_name: str
    accuracy: float | None = None
    examples_per_sec: float | None = None
    jit_compile: str | None = None
    peak_tensor_mb: float | None = None  # TensorFlow's allocator: what precision changes (train/peak_tensor_mb)
    latency_ms_p50: float | None = None
    registered: str | None = None  # "<name> version <n>", or why it was not registered
    target_summary: object = None  # pipeline.training.target.TargetSummary: the time to target accuracy


def run_job(config: DictConfig, overrides: list[str], sweep_id: str | None = None) -> float | None:
    """Validates the config, then runs the configured stages inside one MLflow run; returns the eval accuracy.

    A job of a sweep whose config is wrong still leaves a FAILED run, so the sweep's report shows it.
    A multi-worker job's non-chief workers train their part and log nothing: the chief records the job.
    TensorFlow and MLflow are imported only once the config (and an IDX dataset) has passed its checks.
    """
    run_name = f"{config.model.name}-{config.precision.policy}-bs{config.data.batch_size}"
    chief = distribute.is_chief(config.distribute)
    stopwatch = Stopwatch()
    try:
        config_lib.validate(config, in_sweep=sweep_id is not None)
        # NumPy alone reads IDX: a bad dataset is refused before TensorFlow starts. Not a multi-worker job's: its
        # processes first meet in TensorFlow, and one that left before would keep the others waiting for it.
        if config.data.source == "idx" and config.distribute.strategy != "multi_worker":
            with stopwatch.part("data"):
                data.load_datasets(config.data)  # kept: the data stage takes these splits back
    except (config_lib.ConfigError, data.DataError) as error:
        if sweep_id and chief:
            from pipeline.tracking import runs

            runs.record_failed_run(config, run_name, _tags(config, sweep_id), error)
        raise
    console.import_tensorflow()
    if not chief:
        _train_as_worker(config)
        logger.info("%s: worker done; the chief's MLflow run has the results", run_name)
        return None
    from pipeline.tracking import runs, store

    if not config.train.resume:  # a scheduler's requeue: continue the run its checkpoint folder names
        OmegaConf.update(config, "train.resume", preemption.preempted_run_id(config.train.checkpoint_dir))
    tags = _tags(config, sweep_id) | {"checkpoint.dir": str(config.train.checkpoint_dir)}
    try:
        with runs.start_run(config.tracking, run_name, tags, resume_run_id=config.train.resume,
                            offline_if_unreachable=sweep_id is not None) as tracked:
            if not config.train.resume:
                runs.log_config(config, overrides)
            checkpoint_dir = tracked.kept.tags["checkpoint.dir"]  # a resumed run keeps its first job's folder
            result = _run_stages_recording_stops(config, run_name, tracked.server_run_id, sweep_id, checkpoint_dir,
                                                 stopwatch)
    except preemption.JobStopped as stopped:
        logger.error("%s", preemption.stopped_line(run_name, stopped, tracked.server_run_id,
                                                     tracked.offline_dir if tracked.offline_uri else None, overrides))
        stopped.exit_at_once = tracked.offline_uri is not None
        raise
    preemption.clear_marker(checkpoint_dir)
    if tracked.offline_uri:
        logger.warning("%s", tracked.summary_line())
    # A sweep's jobs get one line each; the sweep's summary at its end leads to the UI.
    links = None if sweep_id or tracked.offline_uri else store.ui_links(
        config.tracking, tracked.run.info.experiment_id, tracked.server_run_id)
    console.print_job_summary(result, links)
    return result.accuracy


def _run_stages_recording_stops(config, run_name, run_id, sweep_id, checkpoint_dir, stopwatch) -> "JobResult":
    """The stages; where the time went and what memory the job left, also when a stage failed; a signal's
    step noted beside its checkpoint, for a requeued job to continue this run."""
    from pipeline.core import device
    from pipeline.tracking import runs

    try:
        return _run_stages(config, run_name, run_id, sweep_id, checkpoint_dir, stopwatch)
    except preemption.JobStopped as stopped:
        runs.stopping()
        if stopped.step is not None and run_id:  # a run offline from its start has no id to continue yet
            preemption.write_marker(checkpoint_dir, run_id, stopped.step, stopped.signum)
        raise
    finally:
        in_use = {f"job/{name}_at_end": value for name, value in device.memory_in_use_mb().items()}
        runs.log_metrics(stopwatch.metrics() | in_use)


def _run_stages(config: DictConfig, run_name: str, run_id: str, sweep_id: str | None, checkpoint_dir: str,
                stopwatch: "Stopwatch") -> JobResult:
    """The stages config.stages names (a prefix of train, evaluate, export, infer), recorded in the active run."""
    from pipeline.core import device
    from pipeline.core import precision as precision_lib
    from pipeline.stages import evaluate, export, infer
    from pipeline.tracking import models, runs

    policy = str(config.precision.policy)
    with stopwatch.part("setup"):
        strategy = distribute.make_strategy(config.distribute)  # first: multi-worker needs it before any TF op
        supported, hardware_note = precision_lib.hardware_support(
            policy, device.gpu_compute_capability(), device.read_cpu_flags())
        if not supported:
            logger.warning("%s", hardware_note)
        runs.set_tags(device.describe_device() | distribute.describe(strategy, config.distribute) | {
            "precision.hardware_supported": str(supported).lower(), "precision.hardware_note": hardware_note})
    with stopwatch.part("data"):
        datasets = data.load_datasets(config.data)
        runs.log_datasets(datasets)
    with stopwatch.part("train"), contextlib.closing(console.Progress(run_name)) as progress:
        trained = _build_and_train(config, strategy, datasets, checkpoint_dir, runs.log_metric_history, progress)
        runs.flush()
        runs.log_metrics(trained.metrics())
        runs.set_tags(trained.tags())
    missed = _target_missed(config, trained)
    if missed:
        best = trained.target_summary.best
        logger.warning("%s: %s (best %s %.4f at step %d); counted as not converged", run_name, missed,
                       trained.target_summary.metric, best.accuracy, best.step)
    result = JobResult(run_name, examples_per_sec=trained.examples_per_sec, jit_compile=str(trained.jit.mode),
                       peak_tensor_mb=trained.peak_tensor_mb, target_summary=trained.target_summary)
    if "evaluate" not in config.stages:
        return result
    with stopwatch.part("evaluate"):
        evaluated = evaluate.evaluate(trained.model, datasets)
        metrics = evaluated.metrics()
        if trained.target_summary.evaluations and trained.target_summary.metric == "eval/accuracy":
            # The end of the curve the evaluations during training drew: at the last step, not at step 0.
            runs.log_metrics({"eval/accuracy": metrics.pop("eval/accuracy")}, step=trained.steps)
        runs.log_metrics(metrics)
        log_confusion_matrix(evaluated.confusion)
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
        model_uris = {"saved_model": runs.with_model_store(
            lambda: models.log_model(exported.model, exported.saved_model_dir, example))}
        model_uris |= {name: runs.with_model_store(
            lambda name=name, path=path: models.log_litert_model(name, path, example, datasets.num_classes))
            for name, path in exported.litert_files.items()}
    with stopwatch.part("register"):
        registered = [_register(config, model_uris[name], run_id, sweep_id, policy, exported.policy, name,
                                evaluated.accuracy, figures, missed) for name, figures in inferred.items()]
    result.registered = ", ".join(text for text in registered if text) or None
    return result


def _build_and_train(config: DictConfig, strategy, datasets, checkpoint_dir: str, log_metric=None, progress=None):
    """Builds (or takes back) the model and optimizer, restores the latest checkpoint to resume, and trains."""
    from pipeline.stages import train
    from pipeline.training import checkpoints, kept_models

    if config.train.deterministic:
        import tensorflow as tf

        # Process-wide and irreversible in TensorFlow: later jobs of a basic-launcher sweep stay deterministic.
        tf.config.experimental.enable_op_determinism()
    policy = str(config.precision.policy)
    with distribute.reporting_lost_workers(config.distribute):
        untrained, optimizer, calls = kept_models.build_or_reuse(config.model, policy, config.train.seed,
                                                                 config.train.learning_rate, strategy)
        with distribute.scope(strategy):
            checkpointer = checkpoints.Checkpointer(untrained, optimizer, checkpoint_dir,
                                                    config.train.checkpoint_every_steps)
        start_step, elapsed_s = checkpointer.restore_latest() if config.train.resume else (0, 0.0)
        try:
            return train.train(untrained, datasets, config.train, policy, log_metric=log_metric, optimizer=optimizer,
                               start_step=start_step, on_steps_done=checkpointer.save_if_due, strategy=strategy,
                               progress=progress, calls=calls, start_elapsed_s=elapsed_s)
        except preemption.JobStopped as stopped:
            if stopped.step is not None:  # the model is as it was after that step: a whole step to resume from
                checkpointer.save(stopped.step, stopped.elapsed_s)
            raise


def _train_as_worker(config: DictConfig) -> None:
    """A non-chief worker's part of a multi-worker job: the same training steps, nothing logged.

    Every worker must take part in each step's all-reduce and in each checkpoint save (saving
    distributed variables is collective too); a worker's checkpoints go to a temporary folder,
    the chief's are the ones kept.
    """
    from pipeline.core import data

    strategy = distribute.make_strategy(config.distribute)
    with tempfile.TemporaryDirectory(prefix="worker-checkpoints-") as checkpoint_dir:
        _build_and_train(config, strategy, data.load_datasets(config.data), checkpoint_dir)


def _register(config, model_uri, run_id, sweep_id, policy, serving_policy, export_format, eval_accuracy,
              figures, target_missed: str | None) -> str | None:
    """Registers a logged model if it passes the gate; returns what the summary says of it.

    The SavedModel is the trained model: its accuracy is the evaluate stage's; a LiteRT file is
    judged on its own accuracy over the test split. A job that missed its target accuracy registers
    nothing: its model is not the converged one the target asked for.
    """
    from pipeline.tracking import registry, runs

    accuracy = eval_accuracy if export_format == "saved_model" else figures.accuracy
    refusal = (target_missed if target_missed and config.tracking.registered_model else
               registry.gate(config.tracking, accuracy, figures.agreement, export_format))
    if refusal:
        logger.warning("%s (%s): not registered: %s", config.tracking.registered_model, export_format, refusal)
        runs.set_tags({"registry.skipped" if export_format == "saved_model" else f"registry.skipped.{export_format}":
                       refusal})
        return f"{export_format} not registered ({refusal})"
    if not config.tracking.registered_model:
        return None
    version_tags = {"precision.policy": policy, "export.policy": serving_policy, "export.format": export_format,
                    "run_id": run_id, "data.batch_size": str(config.data.batch_size), "sweep.id": sweep_id or ""}
    description = (
        f"{config.model.name} trained on {config.data.name} under {policy} (batch {config.data.batch_size}), "
        f"exported as {export_format} (serving policy {serving_policy}); eval accuracy {eval_accuracy:.4f}, "
        f"{export_format} accuracy {figures.accuracy:.4f}, export parity {figures.agreement:.4f}")
    with console.without_mlflow_prints():  # the summary names the version
        version = runs.register_or_keep_pending(
            lambda: registry.register(model_uri, config.tracking.registered_model, version_tags, description),
            export_format, {"registered_model": config.tracking.registered_model, "tags": version_tags,
                            "description": description, "accuracy": accuracy, "agreement": figures.agreement})
    if version is None:
        return None  # pending: the job's last line says so, with the command that makes it
    return f"{config.tracking.registered_model} version {version}" + (
        f" ({export_format})" if export_format != "saved_model" else "")


def _target_missed(config: DictConfig, trained) -> str | None:
    """Why the job did not converge (its target accuracy not reached in the budget), or None."""
    summary = trained.target_summary
    if config.train.target_accuracy is None or summary is None or summary.reached:
        return None
    return f"train.target_accuracy={config.train.target_accuracy:g} not reached in the budget of {trained.steps} steps"


def log_confusion_matrix(confusion) -> None:
    """The evaluate stage's confusion matrix, as eval/confusion_matrix.json and .png on the active run."""
    from pipeline.analysis import plots
    from pipeline.tracking import runs

    with tempfile.TemporaryDirectory(prefix="confusion-") as folder:
        plots.write_confusion_matrix(confusion, pathlib.Path(folder))
        runs.log_artifacts(folder, "eval")


def _metric_prefix(export_format: str) -> str:
    return "infer" if export_format == "saved_model" else f"infer/{export_format}"


def _tags(config: DictConfig, sweep_id: str | None) -> dict[str, str]:
    tags = {"precision.policy": str(config.precision.policy)}
    if sweep_id:
        from pipeline.tracking import sweeps

        tags |= sweeps.sweep_tags(config.tracking, sweep_id)
    return tags


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
