"""`python -m pipeline`: train -> evaluate -> export -> infer for one Hydra job, tracked in MLflow.

Kept short on purpose: the stages live in their own modules, where tests call them directly.
"""

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pipeline import PipelineError

logger = logging.getLogger("pipeline")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(config: DictConfig) -> float:
    try:
        return run_job(config)
    except PipelineError as error:
        logger.error("%s", error)  # the message says what to fix; a traceback would bury it
        raise SystemExit(1) from None


def run_job(config: DictConfig) -> float:
    """Runs the four stages for one job inside one MLflow run; returns the eval accuracy."""
    # Imported here so `--help` and config errors answer without importing TensorFlow.
    from pipeline import data, device, evaluate, export, infer, model, precision, tracking, train

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
    run_name = f"{config.model.name}-{policy}-bs{config.data.batch_size}"
    with tracking.start_run(config.tracking, run_name, tags):
        tracking.log_config(config, HydraConfig.get().overrides.task)
        datasets = data.load_datasets(config.data, seed=config.train.seed)
        untrained = model.build_model(config.model, policy, seed=config.train.seed)
        trained = train.train(untrained, datasets, config.train, policy, log_metric=tracking.log_metric_history)
        evaluated = evaluate.evaluate(trained.model, datasets)
        exported = export.export(trained.model, config.export.dir)
        inferred = infer.infer(exported.saved_model_dir, datasets.test, evaluated.logits, config.infer)
        tracking.log_metrics(trained.metrics() | evaluated.metrics() | inferred.metrics())
        tracking.set_tags({"train.peak_memory_source": trained.peak_memory_source})
        # Logged (and registered) last, so a job that fails in any stage registers nothing.
        example = data.normalize(datasets.test.images[:2]).numpy()
        tracking.log_model(trained.model, exported.saved_model_dir, example, config.tracking.registered_model)
    logger.info("%s: eval accuracy %.4f, %.0f train examples/s", run_name, evaluated.accuracy, trained.examples_per_sec)
    return evaluated.accuracy


if __name__ == "__main__":
    main()
