"""Infer stage: load the exported SavedModel back and measure it on the test split."""

import dataclasses
import time

import numpy as np
import tensorflow as tf

from pipeline.config import InferConfig
from pipeline.core import data


@dataclasses.dataclass
class InferResult:
    """Latency, throughput and parity of the exported model against the in-memory one."""

    latency_ms_p50: float
    latency_ms_p99: float
    examples_per_sec: float
    accuracy: float
    agreement: float
    max_abs_diff: float

    def metrics(self) -> dict[str, float]:
        return {f"infer/{field.name}": getattr(self, field.name) for field in dataclasses.fields(self)}


def infer(saved_model_dir, test_split: data.Split, reference_logits: np.ndarray,
          infer_config: InferConfig) -> InferResult:
    """Loads `saved_model_dir` (not the in-memory model) and runs its `serve` endpoint.

    Args:
        saved_model_dir: the export stage's SavedModel folder.
        test_split: the images to predict, and their labels.
        reference_logits: the in-memory model's logits for the same images (evaluate stage).
        infer_config: latency_runs, throughput_batch_size, throughput_runs.
    """
    loaded = tf.saved_model.load(str(saved_model_dir))
    serve = loaded.serve  # `loaded` must stay referenced: it owns the variables `serve` reads
    images = data.normalize(test_split.images)
    batch_size = infer_config.throughput_batch_size
    batch_starts = range(0, len(images), batch_size)
    logits = np.concatenate([serve(images[start : start + batch_size]).numpy() for start in batch_starts])
    single_images = [data.normalize(test_split.images[index % len(images)][None])
                     for index in range(infer_config.latency_runs)]
    latencies = time_calls(serve, single_images)
    large_batch = images[:batch_size]
    large_batch_seconds = time_calls(serve, [large_batch] * infer_config.throughput_runs)
    return InferResult(
        latency_ms_p50=float(np.percentile(latencies, 50) * 1000),
        latency_ms_p99=float(np.percentile(latencies, 99) * 1000),
        examples_per_sec=float(len(large_batch) * len(large_batch_seconds) / large_batch_seconds.sum()),
        accuracy=float(np.mean(np.argmax(logits, axis=1) == test_split.labels)),
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
