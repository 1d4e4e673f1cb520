"""Sweeps through Hydra's other launchers (joblib, submitit) give the basic launcher's MLflow result; submitit's
requeue on preemption continues each job's run."""

import os
import signal
import subprocess
import sys

import hydra.utils
import pytest
from helpers import (
    QUICK_INFER,
    assert_one_parent_with_children,
    python_environment,
    run_pipeline,
    sweep_arguments,
    wait_for_line,
)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.fresh_store  # parallel jobs race on the new store's migrations
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
def test_submitit_jobs_preempted_mid_training_are_requeued_and_continue_their_runs(tmp_path, store, real_data):
    """submitit_local runs each job through submitit in its own process, as SLURM would on a node. Its preemption
    signal (SIGUSR2) mid-training: each job checkpoints, submitit requeues it, and the requeued job continues
    the same run to the end."""
    arguments = ["-m", "hydra/launcher=submitit_local", "precision=float32,mixed_bfloat16", *real_data, "model=cnn",
                 "train.max_steps=400", "train.steps_per_call=5", *store.overrides, *QUICK_INFER,
                 f"hydra.sweep.dir={tmp_path}/sweep"]
    with (tmp_path / "output.txt").open("w") as output:
        sweep = subprocess.Popen([sys.executable, "-m", "pipeline", *arguments], cwd=tmp_path,
                                 env=python_environment(), stdout=output, stderr=subprocess.STDOUT)
        for job_number in (0, 1):
            wait_for_line(tmp_path / "sweep" / str(job_number) / "__main__.log", "train.jit_compile=", sweep)
        jobs = subprocess.run(["pgrep", "-f", "submitit.core._submit"], capture_output=True, text=True).stdout.split()
        assert len(jobs) == 2
        for pid in jobs:
            os.kill(int(pid), signal.SIGUSR2)
        assert sweep.wait(timeout=600) == 0, (tmp_path / "output.txt").read_text()[-3000:]
    job_logs = ["".join(path.read_text() for path in folder.glob("*_log.*"))
                for folder in tmp_path.glob("sweep/.submitit/*") if any(folder.glob("*_log.*"))]
    assert len(job_logs) == 2 and all("Requeued job" in log and "continuing run" in log for log in job_logs)
    logs = "".join(job_logs)
    parent, children = store.sweep()
    assert len(children) == 2 and parent.info.status == "FINISHED"  # the same two runs, continued
    for child in children:
        assert child.info.status == "FINISHED" and child.data.metrics["train/steps"] == 400
        step = int(child.data.tags["resumed.after"].removeprefix("SIGUSR2 at step "))
        assert 0 < step < 400 and f"stopped by SIGUSR2 at step {step:,}" in logs
    assert len(store.versions()) == 2


def test_slurm_launcher_config_composes_into_submitit_slurm(compose):
    config = compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
                      "distribute=mirrored"], return_hydra_config=True)
    launcher_config = config.hydra.launcher
    assert launcher_config._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher_config.partition, launcher_config.gpus_per_node, launcher_config.tasks_per_node) == ("gpu", 4, 1)
    assert launcher_config.timeout_min == 60 and launcher_config.submitit_folder.endswith(".submitit/%j")
    launcher = hydra.utils.instantiate(launcher_config)  # the plugin accepts every key we set
    assert type(launcher).__name__ == "SlurmLauncher" and launcher.params["partition"] == "gpu"
