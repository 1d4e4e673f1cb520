"""`python -m pipeline`: train -> evaluate -> export -> infer for one Hydra job, tracked in MLflow.

Kept short on purpose: one job reads top to bottom in pipeline/job.py, and the stages live in
pipeline/stages, where tests call them directly. TensorFlow and MLflow are imported only once the
config has passed its checks, so `--help` and config errors answer in about a second.
"""

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pipeline import failures
from pipeline.job import run_job

logger = logging.getLogger("pipeline")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@failures.reporting_errors
def main(config: DictConfig) -> float | None:
    """Runs one job (`repeats` of them, seeds train.seed, +1, ...); returns the eval accuracy, the mean
    over the repeats: the objective of a hyperparameter search."""
    hydra_config = HydraConfig.get()
    sweep_id = None
    if hydra_config.mode == RunMode.MULTIRUN:
        from pipeline import sweep_callback

        sweep_id = sweep_callback.sweep_id_of(hydra_config)
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


if __name__ == "__main__":
    main()
