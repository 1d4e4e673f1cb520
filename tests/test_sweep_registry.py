"""A real 2x2 sweep on Fashion-MNIST: parent run, report, registry, promotion, registry inference, serving."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pytest
from conftest import run_module, run_pipeline

from pipeline import data

MODEL_NAME = "mnist-classifier"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, fashion_mnist_dir):
    """Runs the sweep once for the module; returns (tmp folder, tracking overrides, client)."""
    folder = tmp_path_factory.mktemp("sweep")
    tracking = [f"tracking.uri=sqlite:///{folder}/mlflow.db", f"tracking.artifact_root={folder}/artifacts"]
    result = run_pipeline(
        ["-m", "precision=float32,mixed_bfloat16", "data.batch_size=64,128", "data=fashion_mnist", "data.source=idx",
         f"data.idx_dir={fashion_mnist_dir}", "train.max_steps=150", "infer.latency_runs=20",
         "infer.throughput_runs=3", *tracking],
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    return folder, tracking, mlflow.MlflowClient()


def runs_of(client):
    experiment_id = client.get_experiment_by_name("mixed-precision").experiment_id
    return client.search_runs([experiment_id])


@pytest.mark.e2e
def test_sweep_is_one_parent_with_four_children_and_a_report(sweep):
    _, _, client = sweep
    runs = runs_of(client)
    (parent,) = [run for run in runs if run.data.tags.get("sweep.role") == "parent"]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 5 and len(children) == 4
    assert parent.info.status == "FINISHED" and all(child.info.status == "FINISHED" for child in children)
    assert {child.data.tags["sweep.id"] for child in children} == {parent.data.tags["sweep.id"]}
    assert sorted(child.info.run_name for child in children) == [
        "mlp-float32-bs128", "mlp-float32-bs64", "mlp-mixed_bfloat16-bs128", "mlp-mixed_bfloat16-bs64"]
    artifacts = {artifact.path for artifact in client.list_artifacts(parent.info.run_id, "report")}
    assert artifacts == {f"report/{name}" for name in (
        "report.md", "report.csv", "examples_per_sec_vs_batch_size.png", "peak_memory_vs_batch_size.png",
        "accuracy_per_policy.png", "loss_curves.png")}
    table = open(client.download_artifacts(parent.info.run_id, "report/report.md")).read()
    assert table.count("| mlp |") == 4 and "| float32 | 64 |" in table and "1.00x" in table


@pytest.mark.e2e
def test_every_job_registers_a_tagged_described_version(sweep):
    _, _, client = sweep
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert len(versions) == 4
    runs = {run.info.run_id: run for run in runs_of(client)}
    for version in versions:
        run = runs[version.run_id]
        assert version.tags["precision.policy"] == run.data.params["precision.policy"]
        assert version.tags["data.batch_size"] == run.data.params["data.batch_size"]
        assert version.tags["sweep.id"] == run.data.tags["sweep.id"] and version.tags["run_id"] == run.info.run_id
        assert "eval accuracy" in version.description and run.data.params["precision.policy"] in version.description


@pytest.mark.e2e
def test_promote_sets_champion_by_the_rule_and_is_idempotent(sweep):
    folder, tracking, client = sweep
    result = run_module("pipeline.promote", tracking, cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    # The rule, recomputed here from the runs: accuracy within 0.01 of the best float32, parity,
    # then the highest inference throughput.
    runs = [run for run in runs_of(client) if "mlflow.parentRunId" in run.data.tags]
    best_float32 = max(run.data.metrics["eval/accuracy"] for run in runs
                       if run.data.params["precision.policy"] == "float32")
    qualified = [run for run in runs if run.data.metrics["eval/accuracy"] >= best_float32 - 0.01
                 and run.data.metrics["infer/agreement"] >= 0.999]
    expected = max(qualified, key=lambda run: run.data.metrics["infer/examples_per_sec"])
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert champion.run_id == expected.info.run_id
    assert "infer/examples_per_sec" in champion.tags["promotion.rule"]
    assert len(json.loads(champion.tags["promotion.figures"])) == 4
    assert f"version {champion.version}" in result.stdout

    again = run_module("pipeline.promote", tracking, cwd=folder)
    assert again.returncode == 0 and "nothing changed" in again.stdout
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == champion.version
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(MODEL_NAME, "previous")  # no former champion moved


@pytest.mark.e2e
def test_champion_loads_predicts_and_infers_from_the_registry(sweep, fashion_mnist_dir):
    folder, tracking, client = sweep
    if not _has_champion(client):
        run_module("pipeline.promote", tracking, cwd=folder)
    test_split = data.read_idx_split(fashion_mnist_dir, "test")
    images = data.normalize(test_split.images[:200]).numpy()
    predictions = np.asarray(mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion").predict(images))
    assert predictions.shape == (200, 10) and (predictions.argmax(axis=1) == test_split.labels[:200]).mean() > 0.6

    result = run_module(
        "pipeline.infer_model",
        [*tracking, "data=fashion_mnist", "data.source=idx", f"data.idx_dir={fashion_mnist_dir}",
         f"model_uri=models:/{MODEL_NAME}@champion", "infer.latency_runs=20", "infer.throughput_runs=3"],
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = [run for run in runs_of(client) if run.info.run_name == f"infer models:/{MODEL_NAME}@champion"]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["infer/agreement"] == 1.0 and run.data.metrics["eval/accuracy"] > 0.6
    assert {"infer/latency_ms_p50", "infer/latency_ms_p99", "infer/examples_per_sec"} <= run.data.metrics.keys()


@pytest.mark.e2e
def test_served_champion_answers_over_http(sweep, fashion_mnist_dir):
    folder, tracking, client = sweep
    if not _has_champion(client):
        run_module("pipeline.promote", tracking, cwd=folder)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL_NAME}@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"},
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        _wait_until_up(port, server)
        test_split = data.read_idx_split(fashion_mnist_dir, "test")
        images = data.normalize(test_split.images[:16]).numpy()
        status, body = _post(port, {"inputs": images.tolist()})
        assert status == 200
        served = np.array(body["predictions"])
        in_process = np.asarray(mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion").predict(images))
        np.testing.assert_allclose(served, in_process, atol=1e-5)
        assert (served.argmax(axis=1) == in_process.argmax(axis=1)).all()

        bad_payloads = {
            "wrong shape": images[:, :, :20].tolist(),
            "NaN pixels": np.where(images > 0.5, np.nan, images).tolist(),
            "pixels not scaled to [0, 1]": (images * 255).tolist(),
            "strings": [["not", "an", "image"]],
        }
        for problem, payload in bad_payloads.items():
            status, body = _post(port, {"inputs": payload})
            assert status == 400, (problem, body)
        assert "NaN or infinite" in _post(port, {"inputs": bad_payloads["NaN pixels"]})[1]["message"]
        assert "scaled to [0, 1]" in _post(port, {"inputs": bad_payloads["pixels not scaled to [0, 1]"]})[1]["message"]
        assert server.poll() is None  # bad requests did not take the server down
        assert _post(port, {"inputs": images.tolist()})[0] == 200
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # stop it, and its workers, by its PID
        server.wait(timeout=30)


def _has_champion(client) -> bool:
    try:
        client.get_model_version_by_alias(MODEL_NAME, "champion")
        return True
    except mlflow.exceptions.MlflowException:
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_up(port: int, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"server on port {port} did not answer within {timeout} s")


def _post(port: int, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
