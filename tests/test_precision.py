"""Policies: float32 outputs under every policy, no leaks between jobs, honest hardware notes."""

import importlib

import hydra
import keras
import numpy as np
import pytest
from helpers import tiny_datasets

from pipeline.analysis import comparison, summary
from pipeline.core import config, model, precision
from pipeline.stages import train

COMPUTE_DTYPES = {name: spec.compute_dtype for name, spec in precision.POLICIES.items()}


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
@pytest.mark.parametrize("policy", list(precision.POLICIES))
def test_output_is_float32_under_every_policy(compose, policy, model_name):
    built = model.build_model(compose([f"model={model_name}"]).model, policy, seed=0)
    logits = built(np.zeros((2, 28, 28, 1), np.float32))
    assert logits.dtype == "float32"
    assert built.get_layer("logits").compute_dtype == "float32"
    hidden = [layer for layer in built.layers if layer.weights and layer.name != "logits"]
    assert {layer.compute_dtype for layer in hidden} == {COMPUTE_DTYPES[policy]}
    # Variables stay float32 under mixed policies: updates need float32's resolution.
    assert {weight.dtype for weight in built.weights} == {"float32"}


def test_policy_does_not_leak_between_jobs_in_one_process(compose):
    """float32 -> mixed_bfloat16 -> float32, as Hydra's basic launcher runs a sweep."""
    model_config = compose(["model=mlp"]).model
    for policy in ("float32", "mixed_bfloat16", "float32", "mixed_float16", "float32"):
        built = model.build_model(model_config, policy, seed=0)
        assert keras.mixed_precision.global_policy().name == policy
        dense = built.layers[2]
        assert (dense.compute_dtype, dense.variable_dtype) == (COMPUTE_DTYPES[policy], "float32")


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="precision.policy='float8' is not a known policy; use one of float32, "):
        precision.set_precision_policy("float8")


def test_hardware_notes():
    assert precision.hardware_support("float32", None, set())[0]
    supported, note = precision.hardware_support("mixed_float16", None, {"avx2"})
    assert not supported and "several times slower" in note
    assert precision.hardware_support("mixed_bfloat16", None, {"avx512_bf16"})[0]
    assert precision.hardware_support("mixed_float16", (7, 0), set())[0]
    assert not precision.hardware_support("mixed_bfloat16", (7, 5), set())[0]
    assert precision.hardware_support("mixed_bfloat16", (9, 0), set())[0]


@pytest.fixture
def added_policy(tmp_path, monkeypatch):
    """A policy added the way the README says: one PolicySpec entry and one file in conf/precision/ (here
    in a search-path folder under tmp_path). Pure bfloat16: weights kept in bfloat16 too, no loss scaling."""
    spec = precision.PolicySpec("bfloat16", compute_dtype="bfloat16", variable_dtype="bfloat16",
                                cpu_flags=("avx512_bf16", "amx_bf16"), gpu_capability=(8, 0))
    monkeypatch.setitem(precision.POLICIES, spec.name, spec)
    (tmp_path / "conf" / "precision").mkdir(parents=True)
    (tmp_path / "conf" / "precision" / "bfloat16.yaml").write_text(
        "defaults:\n  - /schema_precision@_here_\n  - _self_\n\npolicy: bfloat16\n")
    importlib.reload(config)  # what a new process does: the config's allowed values come from the table
    yield [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "precision=bfloat16"]
    monkeypatch.undo()
    importlib.reload(config)


def test_a_policy_is_one_table_entry_and_one_yaml_file(compose, added_policy):
    composed = compose([*added_policy, "export.serving_policy=bfloat16", "train.max_steps=6",
                        "train.jit_compile=false"])
    config.validate(composed)
    policy = str(composed.precision.policy)
    built = model.build_model(composed.model, policy, seed=0)
    hidden = [layer for layer in built.layers if layer.weights and layer.name != "logits"]
    assert {(layer.compute_dtype, layer.variable_dtype) for layer in hidden} == {("bfloat16", "bfloat16")}
    assert built.get_layer("logits").compute_dtype == "float32"
    result = train.train(built, tiny_datasets(), composed.train, policy)
    assert result.steps == 6 and np.isfinite(result.final_loss) and result.loss_scale is None  # no loss scaling
    assert precision.hardware_support(policy, None, {"avx512_bf16"}) == (True, "CPU has avx512_bf16: bfloat16 runs "
                                                                               "in hardware")
    rows = [{"run": name, "model": "mlp", "policy": name, "batch_size": 64, "learning_rate": 0.001,
             "status": "FINISHED", "eval_accuracy": accuracy, "train_examples_per_sec": speed}
            for name, accuracy, speed in (("float32", 0.80, 1000.0), ("bfloat16", 0.78, 1500.0))]
    (compared,) = [row for row in comparison.compare_to_float32(rows) if row["policy"] == "bfloat16"]
    assert compared["speedup_vs_float32"] == 1.5 and compared["delta_accuracy_vs_float32"] == pytest.approx(-0.02)
    assert summary.summary_sentences([compared])[0].startswith("bfloat16 vs float32, mlp, batch 64")


def test_a_policy_missing_from_the_table_is_refused_at_composition(compose, tmp_path):
    (tmp_path / "conf" / "precision").mkdir(parents=True)
    (tmp_path / "conf" / "precision" / "bfloat16.yaml").write_text(
        "defaults:\n  - /schema_precision@_here_\n  - _self_\n\npolicy: bfloat16\n")
    with pytest.raises(hydra.errors.ConfigCompositionException) as error:
        compose([f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "precision=bfloat16"])
    assert "Invalid value 'bfloat16', expected one of [float32, mixed_float16, mixed_bfloat16]" in str(error.value)
