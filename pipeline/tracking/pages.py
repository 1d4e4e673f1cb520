"""Reads that page through: a sweep, an experiment or a registry of any size.

MLflow answers at most 1,000 runs a request by default, and says nothing when there were more.
"""

import mlflow

PAGE_SIZE = 1000  # runs or versions per request; MLflow answers at most 1,000 runs by default


def search_all_runs(client: mlflow.MlflowClient, experiment_ids: list[str], filter_string: str = "",
                    order_by: list[str] | None = None) -> list:
    """Every run matching the filter, page after page: a sweep or a team's experiment of any size."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, order_by=order_by, max_results=PAGE_SIZE,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def search_all_model_versions(client: mlflow.MlflowClient, filter_string: str) -> list:
    """Every model version matching the filter, page after page."""
    versions, token = [], None
    while True:
        page = client.search_model_versions(filter_string, max_results=PAGE_SIZE, page_token=token)
        versions.extend(page)
        token = page.token
        if not token:
            return versions


def all_experiment_ids(client: mlflow.MlflowClient) -> list[str]:
    """The ids of every active experiment in the store, page after page."""
    ids, token = [], None
    while True:
        page = client.search_experiments(max_results=PAGE_SIZE, page_token=token)
        ids.extend(experiment.experiment_id for experiment in page)
        token = page.token
        if not token:
            return ids
