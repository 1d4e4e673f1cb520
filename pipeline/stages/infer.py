"""Infer stage: load each exported model back (not the in-memory one) and measure it on the test split."""

import dataclasses
import pathlib
import time

import numpy as np
import tensorflow as tf

from pipeline.core import data
from pipeline.core.config import InferConfig
from pipeline.serving import litert


@dataclasses.dataclass
class InferResult:
    """Latency, throughput and parity of an exported model against the in-memory one."""

    latency_ms_p50: float
    latency_ms_p99: float
    examples_per_sec: float
    accuracy: float
    agreement: float
    max_abs_diff: float
    size_bytes: float | None = None  # of a LiteRT file

    def metrics(self, prefix: str = "infer") -> dict[str, float]:
        """The figures as infer/<name> (the SavedModel's) or infer/<format>/<name>."""
        return {f"{prefix}/{field.name}": getattr(self, field.name) for field in dataclasses.fields(self)
                if getattr(self, field.name) is not None}


def infer(saved_model_dir, test_split: data.Split, reference_logits: np.ndarray,
          infer_config: InferConfig) -> InferResult:
    """Loads `saved_model_dir` (not the in-memory model) and measures its `serve` endpoint.

    Args:
        saved_model_dir: the export stage's SavedModel folder.
        test_split: the images to predict, and their labels.
        reference_logits: the in-memory model's logits for the same images (evaluate stage).
        infer_config: latency_runs, throughput_batch_size, throughput_runs.
    """
    loaded = tf.saved_model.load(str(saved_model_dir))
    serve = loaded.serve  # `loaded` must stay referenced: it owns the variables `serve` reads
    # Tensors in, as a TensorFlow client passes them: no NumPy conversion inside the timed calls.
    return measure(lambda images: serve(images).numpy(), data.normalize(test_split.images), test_split.labels,
                   reference_logits, infer_config)


def infer_litert(path: pathlib.Path, test_split: data.Split, reference_logits: np.ndarray,
                 infer_config: InferConfig) -> InferResult:
    """The same figures for a LiteRT file, run by LiteRT's interpreter (NumPy in and out), and its size."""
    result = measure(litert.Runner(path), data.normalize(test_split.images).numpy(), test_split.labels,
                     reference_logits, infer_config)
    result.size_bytes = float(path.stat().st_size)
    return result


def measure(predict, images, labels: np.ndarray, reference_logits: np.ndarray,
            infer_config: InferConfig) -> InferResult:
    """Accuracy and parity over the test split, batch-1 latency, large-batch throughput of `predict`.

    `images` are float32 in [0, 1], in the form `predict` takes (a tensor or an array); the batches
    timed are cut before the clock starts.
    """
    batch_size = infer_config.throughput_batch_size
    logits = np.concatenate([predict(images[start : start + batch_size])
                             for start in range(0, len(labels), batch_size)])
    single_images = [images[index % len(labels) : index % len(labels) + 1]
                     for index in range(infer_config.latency_runs)]
    latencies = time_calls(predict, single_images)
    large_batch = images[:batch_size]
    large_batch_seconds = time_calls(predict, [large_batch] * infer_config.throughput_runs)
    return InferResult(
        latency_ms_p50=float(np.percentile(latencies, 50) * 1000),
        latency_ms_p99=float(np.percentile(latencies, 99) * 1000),
        examples_per_sec=float(len(large_batch) * len(large_batch_seconds) / large_batch_seconds.sum()),
        accuracy=float(np.mean(np.argmax(logits, axis=1) == labels)),
        agreement=float(np.mean(np.argmax(logits, axis=1) == np.argmax(reference_logits, axis=1))),
        max_abs_diff=float(np.max(np.abs(logits - reference_logits))),
    )


def time_calls(call, arguments, warmup_calls: int = 10) -> np.ndarray:
    """Seconds per `call(argument)`, its result fetched to the host, after a few untimed calls
    that pay for first-call set-up and cold caches."""
    for argument in arguments[:warmup_calls]:
        np.asarray(call(argument))
    seconds = []
    for argument in arguments:
        started = time.perf_counter()
        np.asarray(call(argument))
        seconds.append(time.perf_counter() - started)
    return np.array(seconds)
