"""`python -m pipeline`: train -> evaluate -> export -> infer for one Hydra job, tracked in MLflow.

Kept short on purpose: the stages live in pipeline/stages, where tests call them directly.
TensorFlow and MLflow are imported only once the config has passed its checks, so `--help` and
config errors answer in about a second.
"""

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pipeline import commands, console
from pipeline import config as config_lib
from pipeline.core import distribute

logger = logging.getLogger("pipeline")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@commands.reporting_errors
def main(config: DictConfig) -> float | None:
    """Runs one job (`repeats` of them, seeds train.seed, +1, ...); returns the eval accuracy, the mean
    over the repeats: the objective of a hyperparameter search."""
    hydra_config = HydraConfig.get()
    sweep_id = None
    if hydra_config.mode == RunMode.MULTIRUN:
        from pipeline.tracking import callbacks

        sweep_id = callbacks.sweep_id_of(hydra_config)
    overrides = list(hydra_config.overrides.task)
    if config.repeats <= 1:  # run_job's checks name a repeats below 1
        return run_job(config, overrides, sweep_id)
    accuracies = [run_job(seeded, [*overrides, f"train.seed={seeded.train.seed}"], sweep_id)
                  for seeded in _repeats(config)]
    accuracies = [accuracy for accuracy in accuracies if accuracy is not None]
    return sum(accuracies) / len(accuracies) if accuracies else None


def _repeats(config: DictConfig):
    """The job's config once per seed, each with its own export and checkpoint folders."""
    for offset in range(config.repeats):
        seed = config.train.seed + offset
        yield OmegaConf.merge(config, {
            "train": {"seed": seed, "checkpoint_dir": f"{config.train.checkpoint_dir}/seed{seed}"},
            "export": {"dir": f"{config.export.dir}/seed{seed}"},
        })


def run_job(config: DictConfig, overrides: list[str], sweep_id: str | None = None) -> float | None:
    """Validates the config, then runs the configured stages inside one MLflow run.

    A job of a sweep whose config is wrong still leaves a FAILED run, so the sweep's report shows it.
    A multi-worker job's non-chief workers train their part and log nothing: the chief records the job.
    """
    run_name = f"{config.model.name}-{config.precision.policy}-bs{config.data.batch_size}"
    chief = distribute.is_chief(config.distribute)
    try:
        config_lib.validate(config, in_sweep=sweep_id is not None)  # before MLflow and TensorFlow are imported
    except config_lib.ConfigError as error:
        if sweep_id and chief:
            from pipeline.tracking import runs

            runs.record_failed_run(config, run_name, _tags(config, sweep_id), error)
        raise
    console.import_tensorflow()
    from pipeline.stages import run

    if not chief:
        run.train_as_worker(config)
        logger.info("%s: worker done; the chief's MLflow run has the results", run_name)
        return None
    from pipeline.tracking import runs

    tags = _tags(config, sweep_id) | {"checkpoint.dir": str(config.train.checkpoint_dir)}
    with runs.start_run(config.tracking, run_name, tags, resume_run_id=config.train.resume) as mlflow_run:
        if not config.train.resume:
            runs.log_config(config, overrides)
        checkpoint_dir = mlflow_run.data.tags["checkpoint.dir"]  # a resumed run keeps its first job's folder
        result = run.run_stages(config, run_name, mlflow_run.info.run_id, sweep_id, checkpoint_dir)
    from pipeline.tracking import store

    # A sweep's jobs get one line each; the sweep's summary at its end leads to the UI.
    links = None if sweep_id else store.ui_links(config.tracking, mlflow_run.info.experiment_id, mlflow_run.info.run_id)
    console.print_job_summary(result, links)
    return result.accuracy


def _tags(config: DictConfig, sweep_id: str | None) -> dict[str, str]:
    tags = {"precision.policy": str(config.precision.policy)}
    if sweep_id:
        from pipeline.tracking import sweeps

        tags |= sweeps.sweep_tags(config.tracking, sweep_id)
    return tags


if __name__ == "__main__":
    main()
