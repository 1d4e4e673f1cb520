"""The served model: the exported SavedModel behind input checks, as an MLflow pyfunc model.

MLflow's signature enforcement rejects a wrong shape or dtype; it lets NaN and out-of-range
pixels through, which would come back as confident wrong answers. `validate_images` rejects
them with a message saying what is wrong, which the scoring server answers with HTTP 400.
"""

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from pipeline.core.data import IMAGE_SHAPE


def validate_images(images) -> np.ndarray:
    """Returns `images` as float32 (batch, 28, 28, 1), or raises naming what is wrong.

    Raises:
        MlflowException: (INVALID_PARAMETER_VALUE) wrong shape or dtype, NaN or infinity, or
            pixels outside [0, 1].
    """
    if isinstance(images, dict) and len(images) == 1:  # MLflow passes a named tensor input as {name: array}
        images = next(iter(images.values()))
    array = np.asarray(images)
    if array.dtype.kind not in "fiu":
        _reject(f"images must be numbers, got dtype {array.dtype}")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[1:] != IMAGE_SHAPE:
        _reject(f"images must have shape (batch, 28, 28, 1), got {array.shape}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        _reject(f"images contain {int(np.size(array) - np.isfinite(array).sum())} NaN or infinite values")
    if array.size and (array.min() < 0.0 or array.max() > 1.0):
        _reject(f"pixel values must be scaled to [0, 1], got [{array.min():g}, {array.max():g}]")
    return array


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """Serves the SavedModel logged as artifact `saved_model`, or the LiteRT file logged as
    `litert_model`; returns float32 logits (batch, 10)."""

    def load_context(self, context) -> None:
        if "litert_model" in context.artifacts:
            from pipeline.serving import litert

            self._predict = litert.Runner(context.artifacts["litert_model"])  # a flatbuffer: no Python code runs
            return
        import tensorflow as tf

        loaded = tf.saved_model.load(context.artifacts["saved_model"])  # a graph: no Python code runs
        self._predict = lambda images: loaded.serve(images).numpy()

    # np.ndarray: a type hint MLflow accepts without inferring a schema from it; validate_images checks
    # the input (without a hint, MLflow warns at every import that it wants one).
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        return self._predict(validate_images(model_input))


def _reject(message: str):
    raise MlflowException(message, error_code=INVALID_PARAMETER_VALUE)
