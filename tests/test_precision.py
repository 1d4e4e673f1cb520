"""Policies: float32 outputs under every policy, no leaks between jobs, honest hardware notes."""

import keras
import numpy as np
import pytest

from pipeline.core import model, precision

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
