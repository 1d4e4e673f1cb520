"""Parallel sweeps through Hydra's joblib launcher: same MLflow result as the basic launcher."""

import mlflow
import pytest
from conftest import run_pipeline
from test_pipeline_e2e import CONTRACT_METRICS, QUICK_INFER


@pytest.mark.e2e
def test_joblib_sweep_on_a_fresh_store_loses_no_run_or_metric(tmp_path, fashion_mnist_dir):
    result = run_pipeline(
        ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "precision=float32,mixed_bfloat16",
         "data.batch_size=64,128", "data=fashion_mnist", "data.source=idx", f"data.idx_dir={fashion_mnist_dir}",
         "train.max_steps=100", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
         f"tracking.artifact_root={tmp_path}/artifacts", *QUICK_INFER],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr  # really ran in parallel
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("mixed-precision").experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("sweep.role") == "parent"]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 5 and len(children) == 4 and parent.info.status == "FINISHED"
    for child in children:
        assert child.info.status == "FINISHED"
        assert CONTRACT_METRICS <= child.data.metrics.keys()
        assert len(client.get_metric_history(child.info.run_id, "train/loss")) == 10
    assert len(client.search_model_versions("name='mnist-classifier'")) == 4
    assert len(client.list_artifacts(parent.info.run_id, "report")) == 6
