"""`python -m pipeline`: train -> evaluate -> export -> infer for one Hydra job, tracked in MLflow.

Kept short on purpose: the stages live in their own modules, where tests call them directly.
TensorFlow is imported only once the config has passed its checks, so `--help` and config
errors answer in about a second.
"""

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from pipeline import PipelineError, callbacks
from pipeline import config as config_lib

logger = logging.getLogger("pipeline")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(config: DictConfig) -> float | None:
    hydra_config = HydraConfig.get()
    sweep_id = callbacks.sweep_id_of(hydra_config) if hydra_config.mode == RunMode.MULTIRUN else None
    try:
        return run_job(config, hydra_config.overrides.task, sweep_id)
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


def run_job(config: DictConfig, overrides: list[str], sweep_id: str | None = None) -> float | None:
    """Runs the configured stages for one job inside one MLflow run; returns the eval accuracy."""
    policy = str(config.precision.policy)
    run_name = f"{config.model.name}-{policy}-bs{config.data.batch_size}"
    config_error = None
    try:
        config_lib.validate(config)  # before MLflow and TensorFlow are even imported
        if sweep_id and config.distribute.strategy == "multi_worker":
            raise config_lib.ConfigError("distribute=multi_worker runs one job across the cluster's processes; "
                                         "start it without -m (one command per worker)")
    except config_lib.ConfigError as error:
        if not sweep_id:
            raise
        config_error = error
    from pipeline import distribute

    if not distribute.is_chief() and config.distribute.strategy == "multi_worker":
        if config_error:
            raise config_error  # the chief records the failed run; a worker logs nothing
        from pipeline import stages

        stages.train_as_worker(config)  # the chief alone logs, evaluates, exports and registers
        logger.info("%s: worker done; the chief's MLflow run has the results", run_name)
        return None
    from pipeline import sweeps, tracking

    tags = {"precision.policy": policy} | (sweeps.sweep_tags(config.tracking, sweep_id) if sweep_id else {})
    if config_error:  # a failed run for the sweep's report, rather than a silently missing job
        tracking.record_failed_run(config, run_name, tags, config_error)
        raise config_error
    tags["checkpoint.dir"] = str(config.train.checkpoint_dir)
    with tracking.start_run(config.tracking, run_name, tags, resume_run_id=config.train.resume) as run:
        if not config.train.resume:
            tracking.log_config(config, overrides)
        from pipeline import stages

        checkpoint_dir = run.data.tags["checkpoint.dir"]  # a resumed run keeps its first job's folder
        result = stages.run_stages(config, run.info.run_id, sweep_id, checkpoint_dir)
    logger.info("%s: %s", run_name, result.summary())
    return result.accuracy


if __name__ == "__main__":
    main()
