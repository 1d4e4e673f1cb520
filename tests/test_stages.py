"""The stages chained in-process, as the entry point chains them, on TFDS's real path with mock data."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import compose

from pipeline import data, evaluate, export, infer, model, train


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_stages_chain_on_tfds_mock_data(tmp_path, policy):
    config = compose([
        "data=mnist", "data.source=tfds", f"data.tfds_data_dir={tmp_path}", "data.batch_size=16",
        "train.max_steps=4", "infer.latency_runs=5", "infer.throughput_runs=2", "infer.throughput_batch_size=32",
    ])
    with tfds.testing.mock_data(num_examples=64):
        datasets = data.load_datasets(config.data, seed=0)
    trained = train.train(model.build_model(config.model, policy, seed=0), datasets, config.train, policy)
    evaluated = evaluate.evaluate(trained.model, datasets)
    exported = export.export(trained.model, tmp_path / "export")
    inferred = infer.infer(exported.saved_model_dir, datasets.test, evaluated.logits, config.infer)

    assert trained.steps == 4
    assert evaluated.logits.shape == (64, 10) and evaluated.logits.dtype == np.float32
    assert (exported.saved_model_dir / "saved_model.pb").exists()
    # The export reloaded from disk computes what the in-memory model computed.
    assert inferred.agreement == 1.0 and inferred.max_abs_diff < 1e-4
    assert inferred.accuracy == pytest.approx(evaluated.accuracy)
    assert 0 < inferred.latency_ms_p50 <= inferred.latency_ms_p99 and inferred.examples_per_sec > 0
