"""The stages chained in-process, as the entry point chains them, on TFDS's real path with mock data."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import QUICK_INFER, tiny_datasets

from pipeline.core import data, model
from pipeline.stages import evaluate, export, infer, train


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_stages_chain_on_tfds_mock_data(compose, tmp_path, policy):
    config = compose(["data=mnist", "data.source=tfds", f"data.tfds_data_dir={tmp_path}", "data.batch_size=16",
                      "train.max_steps=4", "infer.throughput_batch_size=32", *QUICK_INFER])
    with tfds.testing.mock_data(num_examples=64):
        datasets = data.load_datasets(config.data)
    trained = train.train(model.build_model(config.model, policy, seed=0), datasets, config.train, policy)
    evaluated = evaluate.evaluate(trained.model, datasets)
    exported = export.export(trained.model, config.export, config.model, policy, seed=0)
    inferred = infer.infer(exported.saved_model_dir, datasets.test, evaluated.logits, config.infer)

    assert trained.steps == 4
    assert evaluated.logits.shape == (64, 10) and evaluated.logits.dtype == np.float32
    assert (exported.saved_model_dir / "saved_model.pb").exists()
    # The export reloaded from disk computes what the in-memory model computed.
    assert inferred.agreement == 1.0 and inferred.max_abs_diff < 1e-4
    assert inferred.accuracy == pytest.approx(evaluated.accuracy)
    assert 0 < inferred.latency_ms_p50 <= inferred.latency_ms_p99 and inferred.examples_per_sec > 0


def test_export_in_another_serving_policy(compose):
    """Trained in float32, served in bfloat16: same definition, trained weights, parity checked."""
    config = compose(["model=mlp", "train.max_steps=20", "export.serving_policy=mixed_bfloat16",
                      "infer.throughput_batch_size=64", *QUICK_INFER])
    datasets = tiny_datasets()
    trained = train.train(model.build_model(config.model, "float32", seed=0), datasets, config.train, "float32")
    evaluated = evaluate.evaluate(trained.model, datasets)

    exported = export.export(trained.model, config.export, config.model, "float32", seed=0)
    inferred = infer.infer(exported.saved_model_dir, datasets.test, evaluated.logits, config.infer)

    assert exported.policy == "mixed_bfloat16" and exported.model is not trained.model
    assert exported.model.layers[2].compute_dtype == "bfloat16"
    assert exported.model.get_layer("logits").compute_dtype == "float32"
    for serving_weight, trained_weight in zip(exported.model.weights, trained.model.weights):
        np.testing.assert_array_equal(serving_weight.numpy(), trained_weight.numpy())
    # bfloat16 keeps 8 bits of mantissa: close to the float32 logits, not equal.
    assert 0 < inferred.max_abs_diff < 0.5 and inferred.agreement >= 0.9
    # The trained model still works after the serving model was built beside it.
    np.testing.assert_allclose(evaluate.evaluate(trained.model, datasets).logits, evaluated.logits, atol=1e-5)
