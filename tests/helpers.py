"""Helpers shared by the test modules: the store a test writes to, subprocess runs of the commands,
servers' ports and start-up, small data. Fixtures that hand them out are in conftest.py.
"""

import os
import pathlib
import subprocess
import sys
import time

import numpy as np

from pipeline.core import data
from pipeline.testing import (  # noqa: F401  re-exported: the test modules import them from here
    DATABASE_USER,
    EXPERIMENT,
    MODEL_NAME,
    Store,
    free_ports,
    mlflow_server,
    postgres_server,
    synthetic_sweep,
    wait_until_up,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
# Fewer timed inference calls: the figures are checked for presence and sense, not for precision.
QUICK_INFER = ["infer.latency_runs=20", "infer.throughput_runs=3"]
# The metric names the MLflow UI comparison relies on.
CONTRACT_METRICS = {
    "train/loss", "train/step_time_ms", "train/step_time_ms_p90", "train/examples_per_sec",
    "train/peak_memory_mb", "eval/loss", "eval/accuracy", "infer/latency_ms_p50", "infer/latency_ms_p99",
    "infer/examples_per_sec", "infer/agreement", "infer/max_abs_diff", "train/peak_tensor_mb",
    "train/resident_tensor_mb", "train/step_transient_mb", "train/peak_rss_mb", "job/rss_mb_at_end",
    "job/tensor_mb_at_end", "train/split_tensor_mb", "memory/estimate/transient_mb", "memory/measured_over_estimate",
    "model/parameters",
}
FLOAT16_METRICS = {"train/loss_scale", "train/skipped_steps"}


def run_module(module: str, arguments: list[str], cwd: pathlib.Path, timeout: float = 600,
               environment: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """Runs `python -m <module> <arguments>` as a user would, from `cwd`, with `environment` added."""
    return subprocess.run([sys.executable, "-m", module, *arguments], cwd=cwd, env=python_environment(environment),
                          capture_output=True, text=True, timeout=timeout)


def run_pipeline(arguments: list[str], cwd: pathlib.Path, timeout: float = 600,
                 environment: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """`python -m pipeline <arguments>`, as run_module."""
    return run_module("pipeline", arguments, cwd, timeout, environment)


def python_environment(extra: dict[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment with this checkout importable, for Python subprocesses; a None in `extra`
    removes that variable."""
    environment = os.environ | {"PYTHONPATH": str(REPO_ROOT), "HYDRA_FULL_ERROR": "1"} | (extra or {})
    return {name: value for name, value in environment.items() if value is not None}


def sweep_arguments(store: Store, real_data: list[str]) -> list[str]:
    """A short real-data job into `store`: what each launcher's sweep test runs."""
    return [*real_data, "train.max_steps=100", *store.overrides, *QUICK_INFER]


def assert_one_parent_with_children(store: Store, job_count: int) -> None:
    """A FINISHED parent run, one FINISHED child per job with every metric, one version each: nothing lost."""
    parent, children = store.sweep()
    assert len(store.runs()) == job_count + 1 and len(children) == job_count and parent.info.status == "FINISHED"
    for child in children:
        assert child.info.status == "FINISHED"
        assert CONTRACT_METRICS <= child.data.metrics.keys()
        assert len(store.client().get_metric_history(child.info.run_id, "train/loss")) == 10
    assert len(store.versions()) == job_count
    assert len(store.client().list_artifacts(parent.info.run_id, "report")) == 8


def resumable_job(store: Store, real_data: list[str], folder: pathlib.Path) -> list[str]:
    """Arguments of a CNN job long enough to interrupt, checkpointing every 20 steps into <folder>/run."""
    return [*real_data, "model=cnn", "train.max_steps=400", "train.steps_per_call=5", "train.checkpoint_every_steps=20",
            "tracking.registered_model=null", *store.overrides, *QUICK_INFER, f"hydra.run.dir={folder}/run"]


def interrupt_after_first_checkpoint(arguments: list[str], folder: pathlib.Path, signal_number: int) -> int:
    """Starts `python -m pipeline <arguments>` from `folder`, sends it `signal_number` once its first
    checkpoint is written, and returns its exit code."""
    job = subprocess.Popen([sys.executable, "-m", "pipeline", *arguments], cwd=folder, env=python_environment(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint_index = folder / "run" / "checkpoints" / "checkpoint"
    deadline = time.monotonic() + 180
    while not checkpoint_index.exists() and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.5)
    assert checkpoint_index.exists(), "no checkpoint was written"
    job.send_signal(signal_number)
    return job.wait(timeout=60)


def signal_during_training(arguments: list[str], folder: pathlib.Path, signal_number: int,
                           after_s: float = 1.0) -> tuple[int, float, str]:
    """Starts `python -m pipeline <arguments>` from `folder` (its Hydra folder <folder>/run), sends it
    `signal_number` `after_s` seconds into training, and returns its exit code, the seconds it took to
    exit after the signal, and its output."""
    output_file = folder / "job-output.txt"
    with output_file.open("w") as output:
        job = subprocess.Popen([sys.executable, "-m", "pipeline", *arguments], cwd=folder, env=python_environment(),
                               stdout=output, stderr=subprocess.STDOUT)
        wait_for_line(folder / "run" / "__main__.log", "train.jit_compile=", job)  # the first line of training
        time.sleep(after_s)
        job.send_signal(signal_number)
        sent = time.monotonic()
        exit_code = job.wait(timeout=60)
    return exit_code, time.monotonic() - sent, output_file.read_text()


def wait_for_line(log_file: pathlib.Path, text: str, job: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and job.poll() is None:
        if log_file.exists() and text in log_file.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"{log_file} never said {text!r} (exit code {job.poll()})")


def tiny_datasets(count=256, batch_size=32) -> data.Datasets:
    """Random images and labels: enough for the training loop's mechanics, nothing to learn."""
    rng = np.random.default_rng(0)
    split = data.Split(
        images=rng.integers(0, 256, (count, 28, 28, 1), dtype=np.uint8),
        labels=rng.integers(0, 10, count).astype(np.int64),
    )
    return data.Datasets(train=split, test=split, batch_size=batch_size, num_classes=10)


