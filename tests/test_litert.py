"""LiteRT exports: every format converts, loads and agrees with Keras on real data; int8 calibration is
seeded; a conversion failure names the format; the logged model is served with the same input checks."""

import json
import os
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
    free_ports,
    run_module,
    run_pipeline,
    tiny_datasets,
    wait_until_up,
)

from pipeline.core import data, model
from pipeline.core.config import ExportFormat
from pipeline.stages import evaluate, export, infer, train

# Agreement with the Keras model's argmax each format promises on the test split.
AGREEMENT = {"litert_float32": 0.999, "litert_float16": 0.995, "litert_dynamic_int8": 0.99, "litert_int8": 0.98}
ALL_FORMATS = "[" + ",".join(ExportFormat) + "]"


@pytest.mark.e2e
def test_every_format_converts_loads_and_agrees_with_keras_on_real_data(compose, real_data):
    config = compose([*real_data, "train.max_steps=200", "data.batch_size=128", f"export.formats={ALL_FORMATS}",
                      "export.calibration_examples=200", *QUICK_INFER])
    datasets = data.load_datasets(config.data)
    trained = train.train(model.build_model(config.model, "mixed_bfloat16", seed=0), datasets, config.train,
                          "mixed_bfloat16")
    evaluated = evaluate.evaluate(trained.model, datasets)
    exported = export.export(trained.model, config.export, config.model, "mixed_bfloat16", seed=0,
                             calibration_split=datasets.train)
    assert set(exported.litert_files) == set(AGREEMENT)  # a bfloat16-trained model converts through float32
    sizes = {}
    for name, path in exported.litert_files.items():
        figures = infer.infer_litert(path, datasets.test, evaluated.logits, config.infer)
        assert figures.agreement >= AGREEMENT[name], name
        assert abs(figures.accuracy - evaluated.accuracy) < 0.01, name
        sizes[name] = figures.size_bytes
    # Quantized weights: float16 about half of float32, int8 about a quarter.
    assert sizes["litert_float16"] < 0.6 * sizes["litert_float32"]
    assert sizes["litert_int8"] < 0.3 * sizes["litert_float32"] and sizes["litert_dynamic_int8"] < 0.3 * sizes[
        "litert_float32"]


def test_int8_calibration_is_the_same_for_the_same_seed():
    split = tiny_datasets(count=1000).train
    first = export._calibration_images(split, 100, seed=3)
    np.testing.assert_array_equal(first, export._calibration_images(split, 100, seed=3))
    assert not np.array_equal(first, export._calibration_images(split, 100, seed=4))
    assert first.shape == (100, 28, 28, 1) and first.dtype == np.float32 and 0 <= first.min() <= first.max() <= 1


def test_a_format_that_fails_to_convert_is_one_line_naming_it(compose, tmp_path):
    config = compose(["model=cnn", "export.serving_policy=mixed_bfloat16"])
    built = model.build_model(config.model, "float32", seed=0)
    exported = export.export(built, config.export, config.model, "float32", seed=0)  # a bfloat16 graph
    with pytest.raises(export.ConversionError, match=r"^export.formats: litert_float32 failed to convert \(.*\); "
                                                     r"drop litert_float32 from export.formats$"):
        export.convert(exported.saved_model_dir, ExportFormat.litert_float32, None, tmp_path / "model.tflite")


@pytest.mark.e2e
@pytest.mark.slow
def test_all_five_formats_are_logged_measured_registered_and_int8_is_served(tmp_path, store, real_data):
    result = run_pipeline([*real_data, "model=cnn", "train.max_steps=150", f"export.formats={ALL_FORMATS}",
                           "export.calibration_examples=200", *QUICK_INFER, *store.overrides], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # The converter's and the interpreter's own C++ lines are silenced at their source.
    assert "fully_quantize" not in result.stderr and "XNNPACK delegate" not in result.stderr
    run = store.only_run()
    for name in AGREEMENT:
        assert {f"infer/{name}/{figure}" for figure in ("latency_ms_p50", "accuracy", "agreement", "max_abs_diff",
                                                        "size_bytes", "examples_per_sec")} <= run.data.metrics.keys()
    assert "infer/accuracy" in run.data.metrics  # the SavedModel's figures keep their names
    versions = {version.tags["export.format"]: version for version in store.versions()}
    assert set(versions) == {"saved_model", *AGREEMENT}

    (port,) = free_ports(1)
    int8_uri = f"models:/{MODEL_NAME}/{versions['litert_int8'].version}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", int8_uri, "--env-manager", "local", "-h",
         "127.0.0.1", "-p", str(port)],
        env=os.environ | {"MLFLOW_TRACKING_URI": store.uri}, cwd=tmp_path, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_until_up(lambda: _post(port, None)[0] is not None, server, "mlflow models serve")
        images = data.normalize(data.read_idx_split(FASHION_MNIST_DIR, "test").images[:16]).numpy()
        status, body = _post(port, {"inputs": images.tolist()})
        assert status == 200 and np.array(body["predictions"]).shape == (16, 10)
        mlflow.set_tracking_uri(store.uri)
        in_process = mlflow.pyfunc.load_model(int8_uri).predict(images)
        np.testing.assert_allclose(np.array(body["predictions"]), in_process, atol=1e-5)
        for bad in (images[:, :, :20].tolist(), np.full_like(images, np.nan).tolist(), (images * 255).tolist()):
            assert _post(port, {"inputs": bad})[0] == 400
    finally:
        server.terminate()
        server.wait(timeout=30)
    # infer_model measures what the URI serves: here the int8 file, not the SavedModel beside it.
    measured = run_module("pipeline.infer_model", [*store.overrides, *real_data, f"model_uri={int8_uri}", *QUICK_INFER],
                          cwd=tmp_path)
    assert measured.returncode == 0, measured.stderr[-3000:]
    (infer_run,) = [run for run in store.runs() if run.info.run_name == f"infer {int8_uri}"]
    assert infer_run.data.metrics["infer/size_bytes"] == run.data.metrics["infer/litert_int8/size_bytes"]


def _post(port: int, payload: dict | None) -> tuple[int | None, dict]:
    """POSTs to /invocations (or GETs /ping with no payload); (None, {}) while nothing answers."""
    url = f"http://127.0.0.1:{port}/{'invocations' if payload is not None else 'ping'}"
    request = urllib.request.Request(url, data=None if payload is None else json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
            return response.status, json.loads(body) if body.strip().startswith(b"{") else {}
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
    except OSError:
        return None, {}
