"""`python -m pipeline`: train -> evaluate -> export -> infer for one Hydra job, tracked in MLflow.

Kept short on purpose: the stages live in their own modules, where tests call them directly.
"""

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from pipeline import PipelineError, callbacks

logger = logging.getLogger("pipeline")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(config: DictConfig) -> float | None:
    hydra_config = HydraConfig.get()
    sweep_id = callbacks.sweep_id_of(hydra_config.sweep.dir) if hydra_config.mode == RunMode.MULTIRUN else None
    try:
        return run_job(config, sweep_id)
    except Exception as error:
        # In a sweep the job's run is already FAILED in MLflow; returning lets the other jobs run,
        # and the sweep's report lists the failure (and the sweep exits non-zero).
        if isinstance(error, PipelineError):
            logger.error("%s", error)  # the message says what to fix; a traceback would bury it
        elif sweep_id:
            logger.exception("job failed")
        else:
            raise
        if sweep_id:
            return None
        raise SystemExit(1) from None


def run_job(config: DictConfig, sweep_id: str | None = None) -> float:
    """Runs the four stages for one job inside one MLflow run; returns the eval accuracy."""
    # Imported here so `--help` and config errors answer without importing TensorFlow.
    from pipeline import data, device, evaluate, export, infer, model, precision, registry, tracking, train

    policy = config.precision.policy
    gpu_capability, cpu_flags = device.gpu_compute_capability(), device.read_cpu_flags()
    supported, hardware_note = precision.hardware_support(policy, gpu_capability, cpu_flags)
    if not supported:
        logger.warning("%s", hardware_note)
    tags = device.describe_device() | {
        "precision.policy": policy,
        "precision.hardware_supported": str(supported).lower(),
        "precision.hardware_note": hardware_note,
    }
    if sweep_id:
        tags |= tracking.sweep_tags(config.tracking, sweep_id)
    run_name = f"{config.model.name}-{policy}-bs{config.data.batch_size}"
    with tracking.start_run(config.tracking, run_name, tags) as run:
        tracking.log_config(config, HydraConfig.get().overrides.task)
        datasets = data.load_datasets(config.data, seed=config.train.seed)
        untrained = model.build_model(config.model, policy, seed=config.train.seed)
        trained = train.train(untrained, datasets, config.train, policy, log_metric=tracking.log_metric_history)
        evaluated = evaluate.evaluate(trained.model, datasets)
        exported = export.export(trained.model, config.export, config.model, policy, seed=config.train.seed)
        inferred = infer.infer(exported.saved_model_dir, datasets.test, evaluated.logits, config.infer)
        tracking.log_metrics(trained.metrics() | evaluated.metrics() | inferred.metrics())
        tracking.set_tags({"train.peak_memory_source": trained.peak_memory_source, "export.policy": exported.policy})
        # Logged and registered last, so a job that fails in any stage registers nothing.
        example = data.normalize(datasets.test.images[:2]).numpy()
        model_uri = tracking.log_model(exported.model, exported.saved_model_dir, example)
        if config.tracking.registered_model:
            version_tags = {"precision.policy": policy, "export.policy": exported.policy, "run_id": run.info.run_id,
                            "data.batch_size": str(config.data.batch_size), "sweep.id": sweep_id or ""}
            description = (f"{config.model.name} trained on {config.data.name} under {policy} (batch "
                           f"{config.data.batch_size}), served under {exported.policy}; eval accuracy "
                           f"{evaluated.accuracy:.4f}, export parity {inferred.agreement:.4f}")
            registry.register(model_uri, config.tracking.registered_model, version_tags, description)
    logger.info("%s: eval accuracy %.4f, %.0f train examples/s", run_name, evaluated.accuracy, trained.examples_per_sec)
    return evaluated.accuracy


if __name__ == "__main__":
    main()
