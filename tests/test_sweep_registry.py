"""A real 2x2 sweep on Fashion-MNIST: parent run, report, registry, promotion, registry inference, serving."""

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pytest
from helpers import (
    FASHION_MNIST_DIR,
    MODEL_NAME,
    QUICK_INFER,
    Store,
    free_ports,
    run_module,
    run_pipeline,
    wait_until_up,
)

from pipeline.core import data

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, real_data) -> Store:
    """Runs the sweep once for the module, into the store it returns."""
    store = Store(tmp_path_factory.mktemp("sweep"))
    result = run_pipeline(["-m", "precision=float32,mixed_bfloat16", "data.batch_size=64,128", *real_data,
                           "train.max_steps=150", *QUICK_INFER, *store.overrides], cwd=store.folder)
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(store.uri)  # models:/ URIs resolve through it
    return store


def test_sweep_is_one_parent_with_four_children_and_a_report(sweep):
    client = sweep.client()
    parent, children = sweep.sweep()
    assert len(sweep.runs()) == 5 and len(children) == 4
    assert parent.info.status == "FINISHED" and all(child.info.status == "FINISHED" for child in children)
    assert {child.data.tags["sweep.id"] for child in children} == {parent.data.tags["sweep.id"]}
    assert sorted(child.info.run_name for child in children) == [
        "mlp-float32-bs128", "mlp-float32-bs64", "mlp-mixed_bfloat16-bs128", "mlp-mixed_bfloat16-bs64"]
    artifacts = {artifact.path for artifact in client.list_artifacts(parent.info.run_id, "report")}
    assert artifacts == {f"report/{name}" for name in (
        "report.md", "report.csv", "examples_per_sec_vs_batch_size.png", "tensor_peak_vs_batch_size.png",
        "memory_estimate.png", "accuracy_per_policy.png", "loss_curves.png", "per_class_delta.png")}
    table = open(client.download_artifacts(parent.info.run_id, "report/report.md")).read()
    assert table.count("| mlp |") == 4 and "| float32 | 64 |" in table and "1.00x" in table


def test_every_job_registers_a_tagged_described_version(sweep):
    versions = sweep.versions()
    assert len(versions) == 4
    runs = {run.info.run_id: run for run in sweep.runs()}
    for version in versions:
        run = runs[version.run_id]
        assert version.tags["precision.policy"] == run.data.params["precision.policy"]
        assert version.tags["data.batch_size"] == run.data.params["data.batch_size"]
        assert version.tags["sweep.id"] == run.data.tags["sweep.id"] and version.tags["run_id"] == run.info.run_id
        assert "eval accuracy" in version.description and run.data.params["precision.policy"] in version.description


def test_promote_sets_champion_by_the_rule_and_is_idempotent(sweep):
    client = sweep.client()
    result = run_module("pipeline.promote", sweep.overrides, cwd=sweep.folder)
    assert result.returncode == 0, result.stderr[-3000:]
    # The rule, recomputed here from the runs: accuracy within 0.01 of the best float32, parity,
    # then the highest inference throughput.
    _, runs = sweep.sweep()
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

    again = run_module("pipeline.promote", sweep.overrides, cwd=sweep.folder)
    assert again.returncode == 0 and "nothing changed" in again.stdout
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == champion.version
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(MODEL_NAME, "previous")  # no former champion moved


def test_champion_loads_predicts_and_infers_from_the_registry(sweep, real_data):
    if not _has_champion(sweep.client()):
        run_module("pipeline.promote", sweep.overrides, cwd=sweep.folder)
    test_split = data.read_idx_split(FASHION_MNIST_DIR, "test")
    images = data.normalize(test_split.images[:200]).numpy()
    predictions = np.asarray(mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion").predict(images))
    assert predictions.shape == (200, 10) and (predictions.argmax(axis=1) == test_split.labels[:200]).mean() > 0.6

    result = run_module(
        "pipeline.infer_model",
        [*sweep.overrides, *real_data, f"model_uri=models:/{MODEL_NAME}@champion", *QUICK_INFER],
        cwd=sweep.folder,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = [run for run in sweep.runs() if run.info.run_name == f"infer models:/{MODEL_NAME}@champion"]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["infer/agreement"] == 1.0 and run.data.metrics["eval/accuracy"] > 0.6
    assert {"infer/latency_ms_p50", "infer/latency_ms_p99", "infer/examples_per_sec"} <= run.data.metrics.keys()


def test_served_champion_answers_over_http(sweep):
    if not _has_champion(sweep.client()):
        run_module("pipeline.promote", sweep.overrides, cwd=sweep.folder)
    (port,) = free_ports(1)
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL_NAME}@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=os.environ | {"MLFLOW_TRACKING_URI": sweep.uri},
        cwd=sweep.folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        wait_until_up(lambda: _answers(port), server, "mlflow models serve")
        test_split = data.read_idx_split(FASHION_MNIST_DIR, "test")
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


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
            return True
    except OSError:
        return False


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


@pytest.mark.parametrize("module,argument,message", [
    ("pipeline.infer_model", "model_uri=models:/nope@champion", "Registered Model with name=nope not found"),
    ("pipeline.infer_model", f"model_uri=models:/{MODEL_NAME}@nope", "alias nope not found; check the name"),
    ("pipeline.infer_model", f"model_uri=models:/{MODEL_NAME}/99", "Model Version (name=mnist-classifier, version=99) "
                                                                   "not found"),
    ("pipeline.infer_model", "model_uri=runs:/0123456789abcdef0123456789abcdef/model", "Run with id=0123456789abcdef"),
    ("pipeline.infer_model", "model_uri=runs:/{parent}/model", "check the name"),  # a run that logged no model
    ("pipeline.promote", "sweep_id=/no/such/sweep", "no sweep found"),
    ("pipeline.promote", "tracking.registered_model=nope", "tracking.registered_model=nope has no version registered"),
    ("pipeline.promote", "rule.metric=infer/nope", "rule.metric=infer/nope is not logged by the sweep's runs"),
    ("pipeline.report", "sweep_id=/no/such/sweep", "no sweep found"),
])
def test_every_wrong_reference_is_one_line_naming_it(sweep, module, argument, message):
    parent, _ = sweep.sweep()
    argument = argument.format(parent=parent.info.run_id)
    result = run_module(module, [*sweep.overrides, argument], cwd=sweep.folder)
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert result.returncode == 1 and "Traceback" not in output, output[-2000:]
    assert len(errors) == 1 and argument.split("=", 1)[1] in errors[0] and message in errors[0], errors
