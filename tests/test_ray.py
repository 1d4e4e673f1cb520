"""hydra/launcher=ray_cluster against a local Ray head on 127.0.0.1, started and stopped here.

Needs the `ray` extra, which lives in its own environment (see the README; `.ci/ray` runs it):
in the main environment this module is skipped.
"""

import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from helpers import assert_one_parent_with_children, free_ports, run_pipeline, sweep_arguments

pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="the ray extra is installed in its own environment")

pytestmark = [pytest.mark.ray, pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def ray_head(tmp_path):
    port = free_ports(1)[0]
    ray = pathlib.Path(sys.executable).with_name("ray")
    session_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    head = subprocess.Popen(
        [str(ray), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false",
         "--num-cpus=2", "--block", f"--temp-dir={session_dir}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([str(ray), "status", f"--address=127.0.0.1:{port}"], capture_output=True).returncode:
            assert head.poll() is None, head.stdout.read()[-2000:]
            assert time.monotonic() < deadline, "the Ray head did not come up in 120 s"
            time.sleep(2)
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)  # by its PID: `ray start --block` stops what it started
        head.wait(timeout=60)
        assert subprocess.run([str(ray), "status", f"--address=127.0.0.1:{port}"],
                              capture_output=True).returncode != 0  # nothing left answering
        shutil.rmtree(session_dir, ignore_errors=True)


def test_ray_sweep_gives_one_parent_with_a_child_per_job(tmp_path, store, ray_head, real_data):
    result = run_pipeline(
        ["-m", "hydra/launcher=ray_cluster", "precision=float32,mixed_bfloat16", *sweep_arguments(store, real_data)],
        cwd=tmp_path, environment={"RAY_ADDRESS": ray_head})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Ray Launcher is launching 2 jobs" in output and "Connected to Ray cluster" in output
    assert "(_run_job pid=" in output  # the jobs ran in Ray's worker processes
    assert_one_parent_with_children(store, 2)
