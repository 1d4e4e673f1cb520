"""End to end: `python -m pipeline` on real Fashion-MNIST, and sweeps with a failing job, against real SQLite
stores (the 2x2 sweep of every stage is test_console's)."""

import mlflow
import numpy as np
import pytest
import tensorflow as tf
from helpers import CONTRACT_METRICS, FASHION_MNIST_DIR, FLOAT16_METRICS, MODEL_NAME, QUICK_INFER, run_pipeline

from pipeline.core import data

pytestmark = pytest.mark.e2e


@pytest.mark.fresh_store  # the README's first command on a new machine
def test_all_four_stages_on_real_fashion_mnist(tmp_path, store, real_data):
    result = run_pipeline([*real_data, "train.max_steps=300", *store.overrides, f"export.dir={tmp_path}/export",
                           *QUICK_INFER], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = store.only_run()
    assert run.info.status == "FINISHED" and run.info.run_name == "mlp-float32-bs128"
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    assert CONTRACT_METRICS <= metrics.keys() and not FLOAT16_METRICS & metrics.keys()
    assert metrics["eval/accuracy"] > 0.7  # chance is 0.1; 300 steps of an MLP reach ~0.8
    assert metrics["infer/agreement"] >= 0.999 and metrics["infer/max_abs_diff"] < 1e-3
    assert len(store.client().get_metric_history(run.info.run_id, "train/loss")) == 30  # every 10 of 300 steps
    assert params["precision.policy"] == "float32" and params["data.name"] == "fashion_mnist"
    assert params["train.max_steps"] == "300" and params["data.batch_size"] == "128"
    assert tags["precision.hardware_supported"] == "true" and tags["train.peak_memory_source"] in ("gpu", "host_rss")
    assert {"device.cpu", "version.tensorflow", "version.keras", "version.mlflow"} <= tags.keys()
    assert "mlflow.parentRunId" not in tags and "sweep.id" not in tags  # a single run stays a plain run

    # The model in the registry is this run's, and predicts what the exported SavedModel predicts.
    (version,) = store.versions()
    assert version.run_id == run.info.run_id
    test_split = data.read_idx_split(FASHION_MNIST_DIR, "test")
    images = data.normalize(test_split.images[:64]).numpy()
    mlflow.set_tracking_uri(store.uri)  # models:/ URIs resolve through it
    registered = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version.version}")
    served = tf.saved_model.load(str(tmp_path / "export" / "saved_model"))
    registered_logits = np.asarray(registered.predict(images))
    np.testing.assert_allclose(registered_logits, served.serve(images).numpy(), atol=1e-4)
    assert (registered_logits.argmax(axis=1) == test_split.labels[:64]).mean() > 0.6


def test_a_failing_job_does_not_stop_the_sweep(tmp_path, store):
    result = run_pipeline(["-m", "data=fashion_mnist", "data.source=idx",
                           f"data.idx_dir={tmp_path}/missing,{FASHION_MNIST_DIR}", "train.max_steps=20",
                           "tracking.registered_model=null", *store.overrides, *QUICK_INFER],
                          cwd=tmp_path)
    assert result.returncode != 0  # the sweep says it is not a clean one...
    assert "1 of 2 jobs failed" in result.stderr
    assert f"data.idx_dir='{tmp_path}/missing' is not a folder" in result.stdout + result.stderr
    statuses = sorted((run.data.tags.get("sweep.role", "job"), run.info.status) for run in store.runs())
    # ...yet the other job finished, and the parent run records the failure.
    assert statuses == [("job", "FAILED"), ("job", "FINISHED"), ("parent", "FAILED")]
    report = next((tmp_path / "multirun").rglob("report.md")).read_text()
    assert "| FAILED |" in report and "| FINISHED |" in report


def test_a_bad_config_in_a_sweep_shows_as_a_failed_run(tmp_path, store, real_data):
    result = run_pipeline(["-m", "data.batch_size=0,64", *real_data, "train.max_steps=5", "stages=[train]",
                           *store.overrides], cwd=tmp_path)
    assert result.returncode != 0 and "1 of 2 jobs failed: mlp-float32-bs0" in result.stderr
    (failed,) = [run for run in store.runs() if run.info.status == "FAILED" and "sweep.role" not in run.data.tags]
    assert failed.data.tags["error"] == "ConfigError: data.batch_size=0 must be positive"
    assert failed.data.params["data.batch_size"] == "0" and "mlflow.parentRunId" in failed.data.tags
