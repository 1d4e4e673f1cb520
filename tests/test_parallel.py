"""Sweeps through Hydra's other launchers (joblib, submitit) give the basic launcher's MLflow result."""

import hydra.utils
import mlflow
import pytest
from conftest import compose, run_pipeline
from test_pipeline_e2e import CONTRACT_METRICS, QUICK_INFER


def sweep_arguments(tmp_path, fashion_mnist_dir) -> list[str]:
    return ["data=fashion_mnist", "data.source=idx", f"data.idx_dir={fashion_mnist_dir}", "train.max_steps=100",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_root={tmp_path}/artifacts",
            *QUICK_INFER]


def assert_one_parent_with_children(tmp_path, job_count: int) -> None:
    """A FINISHED parent run, one FINISHED child per job with every metric, one version each: nothing lost."""
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("mixed-precision").experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("sweep.role") == "parent"]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == job_count + 1 and len(children) == job_count and parent.info.status == "FINISHED"
    for child in children:
        assert child.info.status == "FINISHED"
        assert CONTRACT_METRICS <= child.data.metrics.keys()
        assert len(client.get_metric_history(child.info.run_id, "train/loss")) == 10
    assert len(client.search_model_versions("name='mnist-classifier'")) == job_count
    assert len(client.list_artifacts(parent.info.run_id, "report")) == 6


@pytest.mark.e2e
def test_joblib_sweep_on_a_fresh_store_loses_no_run_or_metric(tmp_path, fashion_mnist_dir):
    result = run_pipeline(
        ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "precision=float32,mixed_bfloat16",
         "data.batch_size=64,128", *sweep_arguments(tmp_path, fashion_mnist_dir)],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr  # really ran in parallel
    assert_one_parent_with_children(tmp_path, 4)


@pytest.mark.e2e
def test_submitit_sweep_runs_each_job_as_a_submitit_job(tmp_path, fashion_mnist_dir):
    # submitit_local runs each job through submitit in its own process, as SLURM would on a node.
    result = run_pipeline(
        ["-m", "hydra/launcher=submitit_local", "precision=float32,mixed_bfloat16",
         *sweep_arguments(tmp_path, fashion_mnist_dir)],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in result.stdout + result.stderr
    assert len(list(tmp_path.glob("multirun/*/*/.submitit/*/*_result.pkl"))) == 2  # submitit's own job records
    assert_one_parent_with_children(tmp_path, 2)


def test_slurm_launcher_config_composes_into_submitit_slurm():
    config = compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
                      "distribute=mirrored"], return_hydra_config=True)
    launcher_config = config.hydra.launcher
    assert launcher_config._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher_config.partition, launcher_config.gpus_per_node, launcher_config.tasks_per_node) == ("gpu", 4, 1)
    assert launcher_config.timeout_min == 60 and launcher_config.submitit_folder.endswith(".submitit/%j")
    launcher = hydra.utils.instantiate(launcher_config)  # the plugin accepts every key we set
    assert type(launcher).__name__ == "SlurmLauncher" and launcher.params["partition"] == "gpu"
