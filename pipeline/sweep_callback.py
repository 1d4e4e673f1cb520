"""The Hydra callback that makes a -m sweep one thing in MLflow: what happens once around a sweep."""

import atexit
import logging
import os

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

logger = logging.getLogger("pipeline")


def sweep_id_of(hydra_config) -> str:
    """A sweep's id: its absolute output folder, the same in the launcher and in every job.

    Resolved against the launch folder (hydra.runtime.cwd, set where the sweep started), not the
    process's folder: a launcher's worker processes (Ray's, submitit's) may start elsewhere.
    """
    return os.path.abspath(os.path.join(hydra_config.runtime.cwd, hydra_config.sweep.dir))


class SweepTrackingCallback(Callback):
    """Makes a `-m` sweep one thing in MLflow: a parent run, a child run per job, a report.

    The store is created here, once, before any job starts: parallel jobs creating a fresh SQLite
    store at once race in its schema migration. Hydra turns a callback's exceptions into warnings,
    so what must stop the command raises SystemExit.
    """

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.tracking_config = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from pipeline import console

        console.setup(verbose=bool(config.get("verbose")) or bool(config.hydra.verbose))
        from pipeline.tracking import sweeps

        self.tracking_config = config.tracking
        from pipeline.tracking import offline

        offline.apply_patience(config.tracking.patience_s)  # the sweep's own calls to the server wait no longer
        sweep_overrides = list(config.hydra.overrides.task)
        try:
            self.parent_run_id = sweeps.start_sweep(config.tracking, sweep_id_of(config.hydra),
                                                    sweep_overrides)
        except Exception as error:
            raise SystemExit(f"cannot start the sweep's MLflow run at {config.tracking.uri}: {error}") from error
        # A sweep stopped by an exception or Ctrl-C never reaches on_multirun_end.
        atexit.register(self._end_if_open, "KILLED")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from pipeline import console, report
        from pipeline.tracking import store, sweeps

        try:
            parent_run = sweeps.find_sweep(config.tracking, sweep_id_of(config.hydra))
        except store.TrackingError:
            self._ended_offline(config)
            return
        report_dir = os.path.join(config.hydra.sweep.dir, "report")
        sweep_report = report.write_report(config.tracking, parent_run, report_dir)
        search_results = os.path.join(config.hydra.sweep.dir, "optimization_results.yaml")
        if os.path.exists(search_results):  # written by the Optuna sweeper (hparams_search=...)
            sweeps.log_search_result(config.tracking, self.parent_run_id, search_results)
        # The jobs in the order a user reads them: soonest to the target, or most accurate first.
        order_by = (("train/time_to_target_s", True) if config.train.get("target_accuracy") is not None
                    else ("eval/accuracy", False))
        links = store.ui_links(config.tracking, parent_run.info.experiment_id, parent_run_id=parent_run.info.run_id,
                               order_by=order_by)
        console.print_sweep_summary(sweep_report, report_dir, links)
        failed = sweep_report.failed_runs
        self._end_if_open("FAILED" if failed else "FINISHED")
        if failed:
            raise SystemExit(f"{len(failed)} of {len(sweep_report.jobs)} jobs failed: {', '.join(failed)}; "
                             "the others finished, see the report")

    def _ended_offline(self, config: DictConfig) -> None:
        """The server is gone at the sweep's end: its jobs kept their runs offline; sync, then report."""
        from pipeline.tracking import sweeps

        sweep_folder = sweep_id_of(config.hydra)
        sweeps.note_ended_offline(sweep_folder)
        self.parent_run_id = None
        logger.warning("tracking server %s unreachable at the sweep's end: its jobs kept their runs under %s; upload "
                       "them with: python -m pipeline.sync %s, then: python -m pipeline.report sweep_id=%s",
                       config.tracking.uri, sweep_folder, sweep_folder, sweep_folder)

    def _end_if_open(self, status: str) -> None:
        if self.parent_run_id is None:
            return
        from pipeline.tracking import sweeps

        try:
            sweeps.end_sweep(self.tracking_config, self.parent_run_id, status)
        except Exception as error:  # at exit, with the server gone: the parent stays open until pipeline.sync
            logger.warning("the sweep's parent run %s could not be ended %s at %s (%s)", self.parent_run_id, status,
                           self.tracking_config.uri, type(error).__name__)
        self.parent_run_id = None
