"""Evaluate stage: test-split loss and accuracy of the in-memory model, per class too, and its predictions."""

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
    confusion: np.ndarray  # (true class, predicted class) counts, classes x classes

    @property
    def class_accuracy(self) -> list[float]:
        """Each class's share of its test images predicted right (recall per class)."""
        return [float(self.confusion[label, label] / max(self.confusion[label].sum(), 1))
                for label in range(len(self.confusion))]

    def metrics(self) -> dict[str, float]:
        per_class = {f"eval/accuracy_class_{label}": value for label, value in enumerate(self.class_accuracy)}
        return {"eval/loss": self.loss, "eval/accuracy": self.accuracy} | per_class


def evaluate(model: keras.Model, datasets: data.Datasets) -> EvaluateResult:
    """Runs the model in inference mode over the whole test split."""
    predict = tf.function(lambda images: model(images, training=False), reduce_retracing=True)
    batches = data.make_batches(datasets.test, datasets.batch_size)
    logits = np.concatenate([predict(images).numpy() for images, _ in batches])
    labels = datasets.test.labels
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    predictions = np.argmax(logits, axis=1)
    confusion = np.zeros((datasets.num_classes, datasets.num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    return EvaluateResult(loss=float(loss), accuracy=float(np.mean(predictions == labels)), logits=logits,
                          confusion=confusion)
