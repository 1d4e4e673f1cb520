"""A -m sweep in MLflow: its parent run, its jobs' child runs, and what the report reads from them."""

import pathlib

import mlflow
from omegaconf import OmegaConf

from pipeline import tracking

SWEEP_ID_TAG = "sweep.id"
SWEEP_ROLE_TAG = "sweep.role"
PARENT_RUN_TAG = "mlflow.parentRunId"  # what MLflow's UI nests child runs under


def start_sweep(tracking_config, sweep_id: str, sweep_overrides: list[str]) -> str:
    """Creates a sweep's parent run (left RUNNING until end_sweep) and returns its id."""
    experiment_id = tracking.prepare_store(tracking_config)
    client = mlflow.MlflowClient(tracking_config.uri)
    tags = {SWEEP_ID_TAG: sweep_id, SWEEP_ROLE_TAG: "parent", "sweep.overrides": " ".join(sweep_overrides)}
    run = client.create_run(experiment_id, run_name=f"sweep-{pathlib.Path(sweep_id).name}", tags=tags)
    return run.info.run_id


def find_sweep(tracking_config, sweep_id: str | None = None):
    """The parent run of sweep `sweep_id`, or of the latest sweep when None; None if there is none."""
    experiment_id = tracking.prepare_store(tracking_config)
    query = f"tags.`{SWEEP_ROLE_TAG}` = 'parent'"
    if sweep_id:
        query += f" and tags.`{SWEEP_ID_TAG}` = '{sweep_id}'"
    client = mlflow.MlflowClient(tracking_config.uri)
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def sweep_tags(tracking_config, sweep_id: str) -> dict[str, str]:
    """Tags that make a job's run a child of its sweep's parent run (just the sweep id if none)."""
    parent_run = find_sweep(tracking_config, sweep_id)
    tags = {SWEEP_ID_TAG: sweep_id}
    if parent_run is not None:
        tags[PARENT_RUN_TAG] = parent_run.info.run_id
    return tags


def sweep_jobs(tracking_config, parent_run) -> list:
    """The child runs of a sweep's parent run, oldest first."""
    client = mlflow.MlflowClient(tracking_config.uri)
    query = f"tags.`{PARENT_RUN_TAG}` = '{parent_run.info.run_id}'"
    return client.search_runs([parent_run.info.experiment_id], query, order_by=["attributes.start_time ASC"])


def log_report(tracking_config, parent_run_id: str, report_dir) -> None:
    """Logs a sweep's report files (tables, plots) on its parent run, under report/."""
    mlflow.MlflowClient(tracking_config.uri).log_artifacts(parent_run_id, str(report_dir), "report")


def log_search_result(tracking_config, parent_run_id: str, results_file) -> None:
    """Logs an Optuna search's outcome on its parent run: the best value and parameters, and the file.

    The best parameters become `search.best.<key>` tags, so the UI's run table can show them.
    """
    results = OmegaConf.load(results_file)
    client = mlflow.MlflowClient(tracking_config.uri)
    client.log_artifact(parent_run_id, str(results_file), "search")
    if "best_value" not in results:  # a multi-objective search lists a Pareto front instead
        return
    client.log_metric(parent_run_id, "search/best_value", float(results.best_value))
    for key, value in results.best_params.items():
        client.set_tag(parent_run_id, f"search.best.{key}", str(value))


def end_sweep(tracking_config, parent_run_id: str, status: str) -> None:
    mlflow.MlflowClient(tracking_config.uri).set_terminated(parent_run_id, status)


def metric_history(tracking_config, run_id: str, name: str) -> list[tuple[int, float]]:
    client = mlflow.MlflowClient(tracking_config.uri)
    return [(point.step, point.value) for point in client.get_metric_history(run_id, name)]
