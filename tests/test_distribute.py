"""tf.distribute training on CPU: 2 logical devices for MirroredStrategy, 2 local processes for multi-worker."""

import json
import subprocess
import sys

import pytest
from helpers import QUICK_INFER, REPO_ROOT, Store, free_ports, python_environment, run_pipeline

from pipeline.core import config

ACCURACY_TOLERANCE = 0.005  # same global batch, seed and data order: only the all-reduce's summation order differs

# Runs in a fresh process: logical devices must be set before TensorFlow starts.
LOSS_SCALE_SCRIPT = """
import json, sys
import numpy as np, tensorflow as tf, keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
keras.mixed_precision.set_global_policy("mixed_float16")
from pipeline.training import steps
with strategy.scope():
    variable = keras.Variable(np.ones(3, np.float32))
    optimizer = steps.make_optimizer("mixed_float16", 0.1)
    optimizer.build([variable])

@tf.function
def step(overflow_replica):
    def replica_step():
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        gradient = tf.where(tf.equal(replica, overflow_replica), tf.fill([3], np.inf), tf.ones([3]))
        optimizer.apply([gradient], [variable])
    strategy.run(replica_step)

results = {}
for name, overflow_replica in (("overflow_on_replica_1", 1), ("finite", -1)):
    step(tf.constant(overflow_replica))
    results[name] = {"replicas": [v.numpy().tolist() for v in strategy.experimental_local_results(variable.value)],
                     "scale": float(optimizer.dynamic_scale.numpy())}
print(json.dumps(results))
"""


@pytest.mark.e2e
def test_loss_scaling_skips_a_step_on_every_replica_when_one_overflows():
    # Stock Keras acts on replica 0's verdict alone and would write -inf into every weight here.
    result = subprocess.run([sys.executable, "-c", LOSS_SCALE_SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300, env=python_environment())
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    overflow, finite = results["overflow_on_replica_1"], results["finite"]
    assert overflow["replicas"] == [[1.0] * 3, [1.0] * 3]  # skipped everywhere
    assert overflow["scale"] == 2.0**14  # halved from 2**15
    first, second = finite["replicas"]
    assert first == second and first[0] < 1.0  # then a finite step applies on both, in step


@pytest.fixture(scope="module")
def training_arguments(tmp_path_factory, real_data) -> tuple[Store, list[str]]:
    """One store for the module's runs (an experiment each) and the job they all run."""
    store = Store(tmp_path_factory.mktemp("distribute"))
    return store, [*real_data, "data.batch_size=128", "train.max_steps=300", *store.overrides,
                   "tracking.registered_model=null", *QUICK_INFER]


@pytest.fixture(scope="module")
def one_device_run(training_arguments):
    store, arguments = training_arguments
    result = run_pipeline([*arguments, "tracking.experiment=one-device"], cwd=store.folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return store.only_run("one-device")


def run_workers(store: Store, arguments: list[str], experiment: str,
                per_worker: list[list[str]]) -> list[tuple[int, str]]:
    """Runs one `python -m pipeline distribute=multi_worker` process per entry of `per_worker` on
    127.0.0.1 ports, as a cluster; returns each one's exit code and output."""
    ports = free_ports(len(per_worker))
    workers = []
    for index, extra_arguments in enumerate(per_worker):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                     "task": {"type": "worker", "index": index}}
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "pipeline", *arguments, "distribute=multi_worker",
             f"tracking.experiment={experiment}", f"hydra.run.dir={store.folder}/{experiment}-worker{index}",
             *extra_arguments],
            cwd=store.folder, env=python_environment({"TF_CONFIG": json.dumps(tf_config)}),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    finally:  # a worker left waiting for the others must not outlive the test
        for worker in workers:
            worker.kill()
    return [(worker.returncode, output) for worker, output in zip(workers, outputs)]


@pytest.mark.e2e
@pytest.mark.slow
def test_two_workers_match_one_device_and_only_the_chief_logs(training_arguments, one_device_run):
    store, arguments = training_arguments
    (chief_code, chief_output), (worker_code, worker_output) = run_workers(store, arguments, "two-workers", [[], []])
    assert (chief_code, worker_code) == (0, 0), chief_output[-2000:] + worker_output[-2000:]
    assert "worker done" in worker_output
    run = store.only_run("two-workers")  # one run: the chief's
    assert run.info.status == "FINISHED"
    assert run.data.tags["distribute.strategy"] == "multi_worker" and run.data.tags["distribute.replicas"] == "2"
    assert run.data.metrics["train/steps"] == one_device_run.data.metrics["train/steps"] == 300
    assert abs(run.data.metrics["eval/accuracy"] - one_device_run.data.metrics["eval/accuracy"]) <= ACCURACY_TOLERANCE
    assert run.data.metrics["infer/agreement"] == 1.0  # the exported model is the trained one


@pytest.mark.e2e
@pytest.mark.slow
def test_a_worker_that_dies_fails_the_chiefs_run_with_one_line(training_arguments, tmp_path):
    store, arguments = training_arguments
    (chief_code, chief_output), (worker_code, worker_output) = run_workers(
        store, arguments, "lost-worker", [[], [f"data.idx_dir={tmp_path}/missing"]])
    assert worker_code == 1 and f"data.idx_dir='{tmp_path}/missing' is not a folder" in worker_output
    assert chief_code == 1 and "another worker of the cluster stopped or cannot be reached" in chief_output
    run = store.only_run("lost-worker")
    assert run.info.status == "FAILED"  # not left RUNNING
    assert "another worker of the cluster stopped" in run.data.tags["error"]


@pytest.mark.e2e
@pytest.mark.slow
def test_mirrored_float16_on_two_cpu_devices_reaches_the_one_device_accuracy(training_arguments, one_device_run):
    store, arguments = training_arguments
    result = run_pipeline([*arguments, "distribute=mirrored", "distribute.logical_cpus=2", "precision=mixed_float16",
                           "tracking.experiment=mirrored"], cwd=store.folder)
    assert result.returncode == 0, result.stderr[-3000:]
    run = store.only_run("mirrored")
    assert run.data.tags["distribute.replicas"] == "2"
    assert run.data.metrics["train/skipped_steps"] == 0 and run.data.metrics["train/loss_scale"] >= 2.0**15
    assert abs(run.data.metrics["eval/accuracy"] - one_device_run.data.metrics["eval/accuracy"]) <= ACCURACY_TOLERANCE


@pytest.mark.e2e
@pytest.mark.parametrize("overrides,message", [
    (["distribute=multi_worker"], "distribute=multi_worker needs the TF_CONFIG environment variable"),
    (["distribute=mirrored", "train.jit_compile=true"], "train.jit_compile=true compiles whole calls"),
    (["distribute=mirrored", "distribute.logical_cpus=2", "data.batch_size=127"],
     "data.batch_size=127 does not split evenly across 2 replicas; use a multiple of 2"),
])
def test_bad_distribute_settings_fail_with_one_line(tmp_path, store, real_data, overrides, message):
    result = run_pipeline([*overrides, *real_data, *store.overrides], cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stdout + result.stderr


def test_multi_worker_cannot_resume(compose, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(config.ConfigError, match="train.resume=abc is not supported with distribute=multi_worker"):
        config.validate(compose(["distribute=multi_worker", "train.resume=abc"]))


@pytest.mark.e2e
def test_multi_worker_inside_a_sweep_is_a_failed_job(tmp_path, store, real_data):
    tf_config = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}
    result = run_pipeline(["-m", "distribute=multi_worker", *real_data, *store.overrides], cwd=tmp_path,
                          environment={"TF_CONFIG": json.dumps(tf_config)})
    assert result.returncode == 1
    assert "distribute=multi_worker runs one job across the cluster's processes" in result.stdout + result.stderr
