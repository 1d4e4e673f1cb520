"""The served model: the exported SavedModel behind input checks, as an MLflow pyfunc model.

MLflow's signature enforcement rejects a wrong shape or dtype; it lets NaN and out-of-range
pixels through, which would come back as confident wrong answers. `validate_images` rejects
them with a message saying what is wrong, which the scoring server answers with HTTP 400.
"""

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE


def validate_images(images, image_shape: tuple[int, ...]) -> np.ndarray:
    """Returns `images` as float32 (batch, *image_shape), or raises naming what is wrong.

    `image_shape` is the served model's own input shape (height, width, channels); a batch of grey
    images may leave out the channel axis.

    Raises:
        MlflowException: (INVALID_PARAMETER_VALUE) wrong shape or dtype, NaN or infinity, or
            pixels outside [0, 1].
    """
    if isinstance(images, dict) and len(images) == 1:  # MLflow passes a named tensor input as {name: array}
        images = next(iter(images.values()))
    array = np.asarray(images)
    if array.dtype.kind not in "fiu":
        _reject(f"images must be numbers, got dtype {array.dtype}")
    image_shape = tuple(image_shape)
    if array.ndim == 3 and image_shape[-1] == 1:
        array = array[..., None]
    if array.ndim != 4 or array.shape[1:] != image_shape:
        _reject(f"images must have shape (batch, {', '.join(map(str, image_shape))}), got {array.shape}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        _reject(f"images contain {int(np.size(array) - np.isfinite(array).sum())} NaN or infinite values")
    if array.size and (array.min() < 0.0 or array.max() > 1.0):
        _reject(f"pixel values must be scaled to [0, 1], got [{array.min():g}, {array.max():g}]")
    return array


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """Serves the SavedModel logged as artifact `saved_model`, or the LiteRT file logged as
    `litert_model`; returns float32 logits (batch, classes). The input check takes the image shape from
    the loaded model itself."""

    def load_context(self, context) -> None:
        if "litert_model" in context.artifacts:
            from pipeline.serving import litert

            self._predict = litert.Runner(context.artifacts["litert_model"])  # a flatbuffer: no Python code runs
            self._image_shape = tuple(int(size) for size in self._predict.input_shape[1:])
            return
        import tensorflow as tf

        loaded = tf.saved_model.load(context.artifacts["saved_model"])  # a graph: no Python code runs
        self._predict = lambda images: loaded.serve(images).numpy()
        (spec,), _ = loaded.serve.concrete_functions[0].structured_input_signature
        self._image_shape = tuple(spec.shape[1:])

    # np.ndarray: a type hint MLflow accepts without inferring a schema from it; validate_images checks
    # the input (without a hint, MLflow warns at every import that it wants one).
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        return self._predict(validate_images(model_input, self._image_shape))


def _reject(message: str):
    raise MlflowException(message, error_code=INVALID_PARAMETER_VALUE)
