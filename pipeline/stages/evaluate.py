"""Evaluate stage: test-split loss and accuracy of the in-memory model, and its predictions."""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from pipeline.core import data


@dataclasses.dataclass
class EvaluateResult:
    """Test-split figures, plus the float32 logits the infer stage compares the export against."""

    loss: float
    accuracy: float
    logits: np.ndarray

    def metrics(self) -> dict[str, float]:
        return {"eval/loss": self.loss, "eval/accuracy": self.accuracy}


def evaluate(model: keras.Model, datasets: data.Datasets) -> EvaluateResult:
    """Runs the model in inference mode over the whole test split."""
    predict = tf.function(lambda images: model(images, training=False), reduce_retracing=True)
    logits = np.concatenate([predict(images).numpy() for images, _ in datasets.test_batches])
    labels = datasets.test.labels
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    accuracy = float(np.mean(np.argmax(logits, axis=1) == labels))
    return EvaluateResult(loss=float(loss), accuracy=accuracy, logits=logits)
