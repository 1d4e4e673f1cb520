"""`python -m pipeline.report`: the comparison table and plots of a past sweep.

    python -m pipeline.report                      # the latest sweep
    python -m pipeline.report sweep_id=<sweep.id>  # a given one (the parent run's sweep.id tag)

The same report is made when a sweep ends (pipeline/tracking/callbacks.py).
"""

import logging

import hydra
from omegaconf import DictConfig

import pipeline.config  # noqa: F401  registers the schemas conf/ names
from pipeline import commands

logger = logging.getLogger("pipeline")


@hydra.main(version_base="1.3", config_path="../conf", config_name="report")
@commands.reporting_errors
def main(config: DictConfig) -> None:
    from pipeline.tracking import sweeps

    parent_run = sweeps.require_sweep(config.tracking, config.sweep_id)
    sweep_report = sweeps.write_report(config.tracking, parent_run, config.output_dir)
    print(sweep_report.markdown)
    logger.info("report of sweep %s in %s", parent_run.data.tags[sweeps.SWEEP_ID_TAG], config.output_dir)


if __name__ == "__main__":
    main()
