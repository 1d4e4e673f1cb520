"""Model definitions, shared by training and serving. Build them after the precision policy is set."""

import hydra.utils
import keras

from pipeline.core import data, distribute, precision
from pipeline.core.config import CnnConfig, MlpConfig


def build_model(model_config: MlpConfig | CnnConfig, policy: str, seed: int, strategy=None) -> keras.Model:
    """Sets `policy` for this job, then builds the configured model (model.<name>'s `_target_`).

    One function does both so no caller can build a layer before the policy is in place.
    Seeds Python, NumPy and TensorFlow after the session reset, so weights start the same.
    Under a tf.distribute `strategy` (None: no strategy) the weights are created in its scope,
    one copy per replica.
    """
    precision.set_precision_policy(policy)
    keras.utils.set_random_seed(seed)
    with distribute.scope(strategy):
        return hydra.utils.instantiate(model_config)


def build_mlp(hidden_units: int = 128, name: str = "mlp") -> keras.Model:
    """Flatten -> Dense(hidden_units, relu) -> float32 logits."""
    inputs = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    hidden = keras.layers.Flatten()(inputs)
    hidden = keras.layers.Dense(hidden_units, activation="relu")(hidden)
    return keras.Model(inputs, _float32_logits(hidden), name=name)


def build_cnn(filters: tuple[int, ...] = (32, 64), dense_units: int = 128, name: str = "cnn") -> keras.Model:
    """Conv(3x3, relu) + MaxPool per entry of `filters` -> Dense(dense_units, relu) -> float32 logits."""
    inputs = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    hidden = inputs
    for filter_count in filters:
        hidden = keras.layers.Conv2D(filter_count, 3, activation="relu")(hidden)
        hidden = keras.layers.MaxPooling2D()(hidden)
    hidden = keras.layers.Flatten()(hidden)
    hidden = keras.layers.Dense(dense_units, activation="relu")(hidden)
    return keras.Model(inputs, _float32_logits(hidden), name=name)


def _float32_logits(hidden):
    # The output layer computes in float32 whatever the policy: softmax and the loss are
    # sensitive to float16/bfloat16 rounding, and serving clients expect float32 scores.
    return keras.layers.Dense(data.NUM_CLASSES, dtype="float32", name="logits")(hidden)
