"""Sweeps through Hydra's other launchers (joblib, submitit) give the basic launcher's MLflow result."""

import hydra.utils
import pytest
from helpers import assert_one_parent_with_children, run_pipeline, sweep_arguments


@pytest.mark.e2e
@pytest.mark.slow
def test_joblib_sweep_on_a_fresh_store_loses_no_run_or_metric(tmp_path, store, real_data):
    result = run_pipeline(
        # More workers than the machine's 2 cores, all four jobs writing one fresh SQLite store at once.
        ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "precision=float32,mixed_bfloat16",
         "data.batch_size=64,128", *sweep_arguments(store, real_data)],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=4" in result.stdout + result.stderr  # really ran in parallel
    assert_one_parent_with_children(store, 4)


@pytest.mark.e2e
@pytest.mark.slow
def test_submitit_sweep_runs_each_job_as_a_submitit_job(tmp_path, store, real_data):
    # submitit_local runs each job through submitit in its own process, as SLURM would on a node.
    result = run_pipeline(
        ["-m", "hydra/launcher=submitit_local", "precision=float32,mixed_bfloat16", *sweep_arguments(store, real_data)],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in result.stdout + result.stderr
    assert len(list(tmp_path.glob("multirun/*/*/.submitit/*/*_result.pkl"))) == 2  # submitit's own job records
    assert_one_parent_with_children(store, 2)


def test_slurm_launcher_config_composes_into_submitit_slurm(compose):
    config = compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
                      "distribute=mirrored"], return_hydra_config=True)
    launcher_config = config.hydra.launcher
    assert launcher_config._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher_config.partition, launcher_config.gpus_per_node, launcher_config.tasks_per_node) == ("gpu", 4, 1)
    assert launcher_config.timeout_min == 60 and launcher_config.submitit_folder.endswith(".submitit/%j")
    launcher = hydra.utils.instantiate(launcher_config)  # the plugin accepts every key we set
    assert type(launcher).__name__ == "SlurmLauncher" and launcher.params["partition"] == "gpu"
