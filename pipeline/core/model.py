"""Model definitions, shared by training and serving. Build them after the precision policy is set.

A model is a builder function called as build(input_shape=..., num_classes=..., **its other keys):
the built-in ones here and in vit.py, or a user's (model=custom model._target_=...). What comes back
is checked before any training: a Keras model, taking the data's images, giving float32 logits.
"""

import importlib

import keras
import numpy as np
from omegaconf import OmegaConf

from pipeline import PipelineError
from pipeline.core import distribute, precision


class ModelError(PipelineError):
    """The configured builder cannot be imported or called, or what it built breaks the contract."""


def build_model(model_config, policy: str, seed: int, strategy=None) -> keras.Model:
    """Sets `policy` for this job, then builds the configured model (model.<name>'s `_target_`).

    One function does both so no caller can build a layer before the policy is in place.
    Seeds Python, NumPy and TensorFlow after the session reset, so weights start the same.
    Under a tf.distribute `strategy` (None: no strategy) the weights are created in its scope,
    one copy per replica.

    Raises:
        ModelError: the builder is missing or fails, or its model breaks the contract (check_model).
    """
    keys = (OmegaConf.to_container(model_config, resolve=True) if OmegaConf.is_config(model_config)
            else dict(model_config))
    target = keys.pop("_target_")
    keys.pop("name", None)
    keys["input_shape"] = tuple(keys["input_shape"])
    builder = _import(target)
    precision.set_precision_policy(policy)
    keras.utils.set_random_seed(seed)
    with distribute.scope(strategy):
        try:
            built = builder(**keys)
        except TypeError as error:
            raise ModelError(f"model._target_={target}: {error}; it is called as build(input_shape=..., "
                             "num_classes=..., **the other keys under model.)") from error
    check_model(built, keys["input_shape"], keys["num_classes"], target)
    return built


def check_model(built, input_shape: tuple, num_classes: int, target: str) -> None:
    """Raises ModelError with one line saying what is wrong with a builder's model, and how to fix it."""
    where = f"model._target_={target}"
    if not isinstance(built, keras.Model):
        raise ModelError(f"{where}: returned a {type(built).__name__}, not a keras.Model; return the model")
    try:
        output = built.outputs[0] if getattr(built, "outputs", None) else built(np.zeros((1, *input_shape), "float32"))
        inputs = tuple(built.inputs[0].shape[1:]) if getattr(built, "inputs", None) else input_shape
    except Exception as error:
        raise ModelError(f"{where}: its model cannot take images of shape {input_shape} (data.image_shape): "
                         f"{type(error).__name__}: {str(error).splitlines()[0]}") from error
    if inputs != tuple(input_shape):
        raise ModelError(f"{where}: its input is {inputs}, the data's images are {tuple(input_shape)}; build "
                         "keras.Input(shape=input_shape)")
    if tuple(output.shape[1:]) != (num_classes,):
        raise ModelError(f"{where}: its output is {tuple(output.shape)}, expected (batch, {num_classes}) logits "
                         "(data.num_classes); end it with keras.layers.Dense(num_classes, dtype='float32')")
    if keras.backend.standardize_dtype(output.dtype) != "float32":
        raise ModelError(f"{where}: its output is {keras.backend.standardize_dtype(output.dtype)}; give the output "
                         "layer dtype='float32' (keras.layers.Dense(num_classes, dtype='float32')): the loss and the "
                         "served logits need float32 under mixed precision")


def _import(target: str):
    module_name, _, function_name = str(target).rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ModelError(f"model._target_={target}: cannot import it ({error}); give an importable function such "
                         "as my_package.models.build, with its package on PYTHONPATH") from error


def build_mlp(input_shape: tuple, num_classes: int, hidden_units: int = 128) -> keras.Model:
    """Flatten -> Dense(hidden_units, relu) -> float32 logits."""
    inputs = keras.Input(shape=input_shape, name="image")
    hidden = keras.layers.Flatten()(inputs)
    hidden = keras.layers.Dense(hidden_units, activation="relu")(hidden)
    return keras.Model(inputs, float32_logits(hidden, num_classes), name="mlp")


def build_cnn(input_shape: tuple, num_classes: int, filters: tuple[int, ...] = (32, 64),
              dense_units: int = 128) -> keras.Model:
    """Conv(3x3, relu) + MaxPool per entry of `filters` -> Dense(dense_units, relu) -> float32 logits."""
    inputs = keras.Input(shape=input_shape, name="image")
    hidden = inputs
    for filter_count in filters:
        hidden = keras.layers.Conv2D(filter_count, 3, activation="relu")(hidden)
        hidden = keras.layers.MaxPooling2D()(hidden)
    hidden = keras.layers.Flatten()(hidden)
    hidden = keras.layers.Dense(dense_units, activation="relu")(hidden)
    return keras.Model(inputs, float32_logits(hidden, num_classes), name="cnn")


def float32_logits(hidden, num_classes: int):
    """The output layer, in float32 whatever the policy: softmax and the loss are sensitive to
    float16/bfloat16 rounding, and serving clients expect float32 scores."""
    return keras.layers.Dense(num_classes, dtype="float32", name="logits")(hidden)
