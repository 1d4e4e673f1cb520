"""Train stage: compiled multi-step training on device-resident data, loss scaling under float16.

The training split lives on the device as one uint8 tensor; each compiled call gathers its
batches from a per-epoch permutation (derived from the seed and the epoch, so any step can be
resumed exactly) and runs up to train.steps_per_call optimizer steps. The host syncs once a
call, not once a step.
"""

import dataclasses
import math
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from pipeline import PipelineError
from pipeline.config import TrainConfig
from pipeline.core import data, device, distribute
from pipeline.stages import steps

# Receives a metric name and its (step, value) points; the entry point passes one that logs to
# MLflow, tests pass a list's append or nothing.
MetricSink = Callable[[str, list[tuple[int, float]]], None]
_FLUSH_SECONDS = 30  # longest a train/loss point waits before it is logged


class TrainingDivergedError(PipelineError):
    """The loss became NaN or infinite: no loss scaling explains an unscaled non-finite loss."""


@dataclasses.dataclass
class TrainResult:
    """The trained model and the figures measured while training it."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
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


def epoch_order(example_count: int, seed: int, epoch: int) -> tf.Tensor:
    """The shuffled example order of one epoch: a function of seed and epoch alone, so resumable."""
    return tf.constant(np.random.default_rng([seed, epoch]).permutation(example_count).astype(np.int32))


def train(model: keras.Model, datasets: data.Datasets, train_config: TrainConfig, policy: str,
          log_metric: MetricSink | None = None, optimizer=None, start_step: int = 0,
          on_steps_done: Callable[[int], None] | None = None, strategy=None) -> TrainResult:
    """Trains for train.epochs passes, or train.max_steps optimizer steps if that comes first.

    Args:
        model: built under `policy`.
        datasets: the training split is read from `datasets.train`.
        train_config: the train config group.
        policy: the precision policy the model was built under.
        log_metric: receives the train/loss points, in one batch an epoch (or every 30 s) and at the end.
        optimizer: an optimizer to continue with (a restored checkpoint's); a new one if None.
        start_step: steps already taken (resuming); the data order continues from there.
        on_steps_done: called with the step count after every call (checkpointing).
        strategy: the tf.distribute strategy the model and optimizer were built under (None: no
            strategy); each of its replicas takes an equal share of the batch size.
    """
    optimizer = optimizer or steps.make_optimizer(policy, train_config.learning_rate)
    batch_size = datasets.batch_size
    steps_per_epoch = len(datasets.train.labels) // batch_size
    total_steps = min(train_config.epochs * steps_per_epoch, train_config.max_steps or math.inf)
    if strategy is None:
        batch_shape = (batch_size,)
        train_call = steps.make_call(model, optimizer, datasets.train, train_config.jit_compile)
    else:
        batch_shape = (strategy.num_replicas_in_sync, distribute.replica_batch_size(strategy, batch_size))
        train_call = steps.make_distributed_call(model, optimizer, datasets.train, train_config.jit_compile, strategy)
    call_seconds, call_steps, loss_points = [], [], []
    step, loss_value, order_epoch, order = start_step, math.nan, None, None
    last_flush = time.monotonic()
    device.reset_peak_memory()
    try:
        while step < total_steps:
            epoch, first_batch = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_order(len(datasets.train.labels), train_config.seed, epoch), epoch
            step_count = min(train_config.steps_per_call, steps_per_epoch - first_batch, total_steps - step,
                             _steps_to_boundary(step, train_config.checkpoint_every_steps))
            started = time.perf_counter()
            batch_indices = tf.reshape(order[first_batch * batch_size : (first_batch + step_count) * batch_size],
                                       (step_count, *batch_shape))
            losses = train_call(batch_indices).numpy()  # the call's one host sync
            call_seconds.append(time.perf_counter() - started)
            call_steps.append(step_count)
            loss_points += [(step + offset + 1, float(loss)) for offset, loss in enumerate(losses)
                            if (step + offset + 1) % train_config.log_every_steps == 0]
            step += step_count
            loss_value = float(losses[-1])
            if not np.isfinite(losses).all():
                bad_step = step - step_count + 1 + int(np.argmin(np.isfinite(losses)))
                raise TrainingDivergedError(f"loss is {losses[~np.isfinite(losses)][0]} at step {bad_step}; "
                                            f"lower train.learning_rate (now {train_config.learning_rate})")
            if log_metric and loss_points and (first_batch + step_count == steps_per_epoch
                                               or time.monotonic() - last_flush > _FLUSH_SECONDS):
                log_metric("train/loss", loss_points)  # batched: no per-step store round trips
                loss_points, last_flush = [], time.monotonic()
            if on_steps_done:
                on_steps_done(step)
    finally:
        if log_metric and loss_points:  # at the end, and on Ctrl-C or an error: keep what was measured
            log_metric("train/loss", loss_points)
    if not call_seconds:
        raise ValueError("training ran no step; raise train.epochs or train.max_steps")
    return _summarize(model, optimizer, step, loss_value, call_seconds, call_steps, batch_size)


def _steps_to_boundary(step: int, every: int | None) -> int:
    return every - step % every if every else math.inf


def _summarize(model, optimizer, step, loss_value, call_seconds, call_steps, batch_size) -> TrainResult:
    # The first call traces and compiles: reported as warm-up, kept out of the step times.
    timed = slice(1, None) if len(call_seconds) > 1 else slice(None)
    per_step_seconds = np.array(call_seconds[timed]) / np.array(call_steps[timed])
    timed_seconds, timed_steps = sum(call_seconds[timed]), sum(call_steps[timed])
    peak_memory_mb, peak_memory_source = device.read_peak_memory_mb()
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    return TrainResult(
        model=model,
        optimizer=optimizer,
        steps=step,
        final_loss=loss_value,
        step_time_ms=float(np.median(per_step_seconds) * 1000),
        step_time_ms_p90=float(np.percentile(per_step_seconds, 90) * 1000),
        examples_per_sec=float(timed_steps * batch_size / timed_seconds),
        peak_memory_mb=peak_memory_mb,
        peak_memory_source=peak_memory_source,
        warmup_seconds=float(call_seconds[0]),
        skipped_steps=step - int(optimizer.iterations.numpy()) if loss_scaled else 0,
        loss_scale=float(optimizer.dynamic_scale.numpy()) if loss_scaled else None,
    )
