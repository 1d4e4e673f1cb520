"""Train stage: a compiled custom training step, with dynamic loss scaling under mixed_float16."""

import dataclasses
import math
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from pipeline import PipelineError, device

# Receives a metric name and its (step, value) points; the entry point passes one that logs to
# MLflow, tests pass a list's append or nothing.
MetricSink = Callable[[str, list[tuple[int, float]]], None]


class TrainingDivergedError(PipelineError):
    """The loss became NaN or infinite: no loss scaling explains an unscaled non-finite loss."""


@dataclasses.dataclass
class TrainResult:
    """The trained model and the figures measured while training it."""

    model: keras.Model
    steps: int
    final_loss: float
    step_time_ms: float
    step_time_ms_p90: float
    examples_per_sec: float
    peak_memory_mb: float
    peak_memory_source: str
    warmup_seconds: float
    skipped_steps: int = 0
    loss_scale: float | None = None

    def metrics(self) -> dict[str, float]:
        """The summary metrics under their MLflow names (train/loss is logged as a history)."""
        metrics = {
            "train/final_loss": self.final_loss,
            "train/steps": self.steps,
            "train/step_time_ms": self.step_time_ms,
            "train/step_time_ms_p90": self.step_time_ms_p90,
            "train/examples_per_sec": self.examples_per_sec,
            "train/peak_memory_mb": self.peak_memory_mb,
            "train/warmup_seconds": self.warmup_seconds,
        }
        if self.loss_scale is not None:
            metrics["train/loss_scale"] = self.loss_scale
            metrics["train/skipped_steps"] = self.skipped_steps
        return metrics


def make_optimizer(policy: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """Adam, wrapped in dynamic loss scaling for float16 (bfloat16 and float32 need none)."""
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def make_train_step(model: keras.Model, optimizer, jit_compile: bool):
    """One optimizer step as a compiled function returning the unscaled float32 loss."""
    loss_function = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=jit_compile)
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            loss = loss_function(labels, model(images, training=True))
            # Identity for plain optimizers; multiplies by the dynamic scale under float16 so
            # small gradients survive the float16 backward pass.
            scaled_loss = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        # LossScaleOptimizer unscales, and skips the update (halving the scale) on inf/NaN.
        optimizer.apply(gradients, model.trainable_variables)
        return loss

    return train_step


def train(model: keras.Model, datasets, train_config, policy: str, log_metric: MetricSink | None = None) -> TrainResult:
    """Trains `model` for train.epochs passes, or train.max_steps optimizer steps if that comes first."""
    optimizer = make_optimizer(policy, train_config.learning_rate)
    train_step = make_train_step(model, optimizer, train_config.jit_compile)
    max_steps = train_config.max_steps or math.inf
    step_seconds, step_examples, loss_points = [], [], []
    step, loss_value = 0, math.nan
    device.reset_peak_memory()
    for _ in range(train_config.epochs):
        for images, labels in datasets.train_batches:
            if step >= max_steps:
                break
            started = time.perf_counter()
            loss_value = float(train_step(images, labels))  # the sync that makes the timing real
            step_seconds.append(time.perf_counter() - started)
            step_examples.append(int(images.shape[0]))
            step += 1
            if not math.isfinite(loss_value):
                raise TrainingDivergedError(
                    f"loss is {loss_value} at step {step}; lower train.learning_rate (now {train_config.learning_rate})"
                )
            if step % train_config.log_every_steps == 0:
                loss_points.append((step, loss_value))
        if log_metric and loss_points:
            log_metric("train/loss", loss_points)  # once an epoch: no per-step store round trips
            loss_points = []
    if step == 0:
        raise ValueError("training ran no step; raise train.epochs or train.max_steps")
    peak_memory_mb, peak_memory_source = device.read_peak_memory_mb()
    timed = slice(train_config.warmup_steps, None) if step > train_config.warmup_steps else slice(1, None)
    timed_seconds = np.array(step_seconds[timed] or step_seconds)
    timed_examples = sum(step_examples[timed] or step_examples)
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    return TrainResult(
        model=model,
        steps=step,
        final_loss=loss_value,
        step_time_ms=float(np.median(timed_seconds) * 1000),
        step_time_ms_p90=float(np.percentile(timed_seconds, 90) * 1000),
        examples_per_sec=float(timed_examples / timed_seconds.sum()),
        peak_memory_mb=peak_memory_mb,
        peak_memory_source=peak_memory_source,
        warmup_seconds=float(sum(step_seconds[: timed.start or 0])),
        skipped_steps=step - int(optimizer.iterations.numpy()) if loss_scaled else 0,
        loss_scale=float(optimizer.dynamic_scale.numpy()) if loss_scaled else None,
    )
