"""`python -m pipeline.report`: the comparison table and plots of a past sweep.

    python -m pipeline.report                      # the latest sweep
    python -m pipeline.report sweep_id=<sweep.id>  # a given one (the parent run's sweep.id tag)

The same report is made when a sweep ends (pipeline/sweep_callback.py).
"""

import logging

import hydra
from omegaconf import DictConfig

import pipeline.core.config  # registers the schemas conf/ names; validate_command
from pipeline import failures

logger = logging.getLogger("pipeline")


@hydra.main(version_base="1.3", config_path="../conf", config_name="report")
@failures.reporting_errors
def main(config: DictConfig) -> None:
    pipeline.core.config.validate_command(config)  # before the store is opened
    from pipeline.tracking import sweeps

    parent_run = sweeps.require_sweep(config.tracking, config.sweep_id)
    sweep_report = write_report(config.tracking, parent_run, config.output_dir)
    print(sweep_report.markdown)
    logger.info("report of sweep %s in %s", parent_run.data.tags[sweeps.SWEEP_ID_TAG], config.output_dir)


def write_report(tracking_config, parent_run, report_dir):
    """Builds the report of a sweep's jobs into `report_dir` and logs its files on the sweep's parent run.

    Returns:
        The report (pipeline.analysis.comparison.Report): its rows, Markdown, files and warnings.
    """
    from pipeline.analysis import comparison
    from pipeline.tracking import sweeps

    jobs = sweeps.sweep_jobs(tracking_config, parent_run)
    # One request per curve: a bounded number of curves.
    loss_histories = sweeps.metric_histories(tracking_config, comparison.loss_curve_jobs(jobs), "train/loss")
    accuracy_curves = sweeps.accuracy_curves(tracking_config, jobs)  # two requests a job that evaluated while training
    sweep_report = comparison.make_report(jobs, loss_histories, report_dir, accuracy_curves)
    sweeps.log_report(tracking_config, parent_run, report_dir)
    return sweep_report


if __name__ == "__main__":
    main()
