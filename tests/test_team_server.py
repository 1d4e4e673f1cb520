"""tracking=server: a sweep against a real `mlflow server` backed by a real PostgreSQL, checked over REST."""

import json
import subprocess
import urllib.parse
import urllib.request

import mlflow
import numpy as np
import pytest
from helpers import (
    DATABASE_USER,
    FASHION_MNIST_DIR,
    MODEL_NAME,
    QUICK_INFER,
    mlflow_server,
    postgres_server,
    run_pipeline,
)

from pipeline.core import data

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as database:
        yield database


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    database_uri, _ = postgres
    artifacts = tmp_path_factory.mktemp("server-artifacts")
    with mlflow_server(database_uri, artifacts) as url:
        yield url, artifacts


def get(url: str, path: str, **query):
    try:
        with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(query)}", timeout=10) as response:
            body = response.read()
            return json.loads(body) if body.startswith(b"{") else body.decode()
    except OSError:
        return None


def post(url: str, path: str, payload: dict) -> dict:
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_team_sweep_lands_in_postgres_through_the_server(tracking_server, postgres, tmp_path, real_data):
    url, artifacts = tracking_server
    result = run_pipeline(
        ["-m", "tracking=server", "precision=float32,mixed_bfloat16", *real_data, "train.max_steps=100", *QUICK_INFER],
        cwd=tmp_path, environment={"MLFLOW_TRACKING_URI": url})  # tracking=server reads the team's URL from here
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "mlruns").exists()  # nothing tracked locally

    experiment = get(url, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="mixed-precision")["experiment"]
    runs = post(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    tags = {run["info"]["run_id"]: {tag["key"]: tag["value"] for tag in run["data"]["tags"]} for run in runs}
    (parent_id,) = [run_id for run_id, run_tags in tags.items() if run_tags.get("sweep.role") == "parent"]
    child_ids = [run_id for run_id, run_tags in tags.items() if run_tags.get("mlflow.parentRunId") == parent_id]
    assert len(runs) == 3 and len(child_ids) == 2
    assert {run["info"]["status"] for run in runs} == {"FINISHED"}
    for child_id in child_ids:
        history = get(url, "/api/2.0/mlflow/metrics/get-history", run_id=child_id, metric_key="train/loss")["metrics"]
        assert [point["step"] for point in history] == list(range(10, 101, 10))
        child = get(url, "/api/2.0/mlflow/runs/get", run_id=child_id)["run"]
        assert {metric["key"] for metric in child["data"]["metrics"]} >= {"eval/accuracy", "infer/latency_ms_p50"}

    models = post(url, "/api/2.0/mlflow/logged-models/search",
                  {"experiment_ids": [experiment["experiment_id"]]})["models"]
    assert sorted(model["info"]["source_run_id"] for model in models if model["info"]["name"] == "model") == sorted(
        child_ids)
    # Artifacts went through the server's proxy into its --artifacts-destination folder.
    assert len(list(artifacts.rglob("MLmodel"))) >= 2
    assert list(artifacts.rglob("report/report.md"))

    versions = get(url, "/api/2.0/mlflow/model-versions/search", filter=f"name='{MODEL_NAME}'")["model_versions"]
    assert sorted(version["run_id"] for version in versions) == sorted(child_ids)
    assert {version["status"] for version in versions} == {"READY"}
    images = data.normalize(data.read_idx_split(FASHION_MNIST_DIR, "test").images[:4]).numpy()
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(url)
    try:  # the registered model downloads through the server and predicts
        predictions = np.asarray(mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/1").predict(images))
    finally:
        mlflow.set_tracking_uri(previous_uri)
    assert predictions.shape == (4, 10)

    _, database_port = postgres
    stored = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(database_port), "-U", DATABASE_USER, "-d", "mlflow",
                             "-tAc", "select count(*) from runs"], capture_output=True, text=True, check=True)
    assert stored.stdout.strip() == "3"  # the runs live in PostgreSQL
