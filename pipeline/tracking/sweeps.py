"""A -m sweep in MLflow: its parent run, its jobs' child runs, and its report's files on the parent."""

import json
import pathlib

from omegaconf import OmegaConf

from pipeline.core.config import TrackingConfig
from pipeline.tracking import liveness, pages, store

SWEEP_ID_TAG = "sweep.id"
SWEEP_ROLE_TAG = "sweep.role"
PARENT_RUN_TAG = "mlflow.parentRunId"  # what MLflow's UI nests child runs under
RECORD_FILE = "sweep_run.json"  # in the sweep's folder


def start_sweep(tracking_config: TrackingConfig, sweep_id: str, sweep_overrides: list[str]) -> str:
    """Creates a sweep's parent run (left RUNNING until end_sweep) and returns its id."""
    experiment_id = store.prepare(tracking_config)
    tags = {SWEEP_ID_TAG: sweep_id, SWEEP_ROLE_TAG: "parent", "sweep.overrides": " ".join(sweep_overrides)}
    tags |= liveness.process_tags()  # the launcher's process: if it is killed hard, the parent is ended KILLED
    run = store.client(tracking_config.uri).create_run(experiment_id, run_name=f"sweep-{pathlib.Path(sweep_id).name}",
                                                       tags=tags)
    # The jobs read their parent from here: a job that starts while the server is gone still knows it.
    record = pathlib.Path(sweep_id) / RECORD_FILE
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"parent_run_id": run.info.run_id, "tracking_uri": str(tracking_config.uri)}))
    return run.info.run_id


def find_sweep(tracking_config: TrackingConfig, sweep_id: str | None = None):
    """The parent run of sweep `sweep_id`, or of the latest sweep when None; None if there is none."""
    experiment_id = store.prepare(tracking_config)
    query = f"tags.`{SWEEP_ROLE_TAG}` = 'parent'"
    if sweep_id:
        query += f" and tags.`{SWEEP_ID_TAG}` = '{sweep_id}'"
    runs = store.client(tracking_config.uri).search_runs([experiment_id], query,
                                                         order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def require_sweep(tracking_config: TrackingConfig, sweep_id: str | None):
    """find_sweep, for commands that need one.

    Raises:
        NotFoundError: there is no such sweep in the store.
    """
    parent_run = find_sweep(tracking_config, sweep_id)
    if parent_run is None:
        which = f"sweep_id={sweep_id}" if sweep_id else "any sweep"
        raise store.NotFoundError(f"no sweep found in {tracking_config.uri} ({which}); run one with -m first, "
                            "or check tracking.uri and sweep_id")
    return parent_run


def sweep_tags(tracking_config: TrackingConfig, sweep_id: str) -> dict[str, str]:
    """Tags that make a job's run a child of its sweep's parent run (just the sweep id if none); the parent
    is read from the sweep's folder (written by start_sweep), else looked up in the store."""
    tags = {SWEEP_ID_TAG: sweep_id}
    record = read_record(sweep_id)
    if record.get("tracking_uri") == str(tracking_config.uri):
        return tags | {PARENT_RUN_TAG: record["parent_run_id"]}
    parent_run = find_sweep(tracking_config, sweep_id)
    if parent_run is not None:
        tags[PARENT_RUN_TAG] = parent_run.info.run_id
    return tags


def read_record(sweep_folder) -> dict:
    """What start_sweep wrote in a sweep's folder ({} if nothing): its parent run and store, and, when the
    server was gone at the sweep's end, "ended_offline"."""
    try:
        return json.loads((pathlib.Path(sweep_folder) / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}


def note_ended_offline(sweep_folder) -> None:
    """The sweep ended while its server was gone: `pipeline.sync` ends its parent run once the jobs are up."""
    record = read_record(sweep_folder) | {"ended_offline": True}
    (pathlib.Path(sweep_folder) / RECORD_FILE).write_text(json.dumps(record))


def sweep_jobs(tracking_config: TrackingConfig, parent_run) -> list:
    """The child runs of a sweep's parent run, oldest first: every one, however many."""
    return pages.search_all_runs(store.client(tracking_config.uri), [parent_run.info.experiment_id],
                                 f"tags.`{PARENT_RUN_TAG}` = '{parent_run.info.run_id}'",
                                 order_by=["attributes.start_time ASC"])


def metric_histories(tracking_config: TrackingConfig, runs: list, name: str) -> dict[str, list[tuple[int, float]]]:
    """Each run's (step, value) points of metric `name`, by run id: one request per run."""
    client = store.client(tracking_config.uri)
    return {run.info.run_id: [(point.step, point.value) for point in client.get_metric_history(run.info.run_id, name)]
            for run in runs}


def accuracy_curves(tracking_config: TrackingConfig, runs: list) -> dict[str, list[tuple[float, float]]]:
    """Each run's (seconds on its clock, accuracy) at its evaluations during training, by run id: the runs
    that evaluated during training (their train.evaluation_metric tag), two requests each."""
    client, curves = store.client(tracking_config.uri), {}
    for run in runs:
        metric = run.data.tags.get("train.evaluation_metric")
        if metric:
            accuracy = {point.step: point.value for point in client.get_metric_history(run.info.run_id, metric)}
            elapsed = client.get_metric_history(run.info.run_id, "train/elapsed_s")
            curves[run.info.run_id] = [(point.value, accuracy[point.step])
                                       for point in sorted(elapsed, key=lambda point: point.step)
                                       if point.step in accuracy]
    return curves


def log_report(tracking_config: TrackingConfig, parent_run, report_dir) -> None:
    """The report's files, on the sweep's parent run under report/."""
    store.client(tracking_config.uri).log_artifacts(parent_run.info.run_id, str(report_dir), "report")


def log_search_result(tracking_config: TrackingConfig, parent_run_id: str, results_file) -> None:
    """Logs an Optuna search's outcome on its parent run: the best value and parameters, and the file.

    The best parameters become `search.best.<key>` tags, so the UI's run table can show them.
    """
    results = OmegaConf.load(results_file)
    client = store.client(tracking_config.uri)
    client.log_artifact(parent_run_id, str(results_file), "search")
    if "best_value" not in results:  # a multi-objective search lists a Pareto front instead
        return
    client.log_metric(parent_run_id, "search/best_value", float(results.best_value))
    for key, value in results.best_params.items():
        client.set_tag(parent_run_id, f"search.best.{key}", str(value))


def end_sweep(tracking_config: TrackingConfig, parent_run_id: str, status: str) -> None:
    store.client(tracking_config.uri).set_terminated(parent_run_id, status)
