"""Train stage: compiled multi-step training on device-resident data, loss scaling under float16.

The training split lives on the device as one uint8 tensor; each compiled call gathers its
batches from a per-epoch permutation (derived from the seed and the epoch, so any step can be
resumed exactly) and runs up to train.steps_per_call optimizer steps. The host syncs once a
call, not once a step.
"""

import dataclasses
import gc
import logging
import math
import time
from collections.abc import Callable

import keras
import numpy as np

from pipeline import PipelineError, preemption
from pipeline.core import data, device, distribute
from pipeline.core.config import JitCompile, TrainConfig, jit_mode
from pipeline.training import batch_order, compile_mode, memory, steps, target

# Receives a metric name and its (step, value) points; the entry point passes one that logs to
# MLflow, tests pass a list's append or nothing.
MetricSink = Callable[[str, list[tuple[int, float]]], None]
# Receives (step, total steps, epoch, loss, examples/s, the latest evaluation's accuracy) after every compiled
# call: live progress.
ProgressSink = Callable[[int, int, int, float, float | None, float | None], None]
logger = logging.getLogger("pipeline")
_FLUSH_SECONDS = 30  # longest a train/loss point waits before it is logged


class TrainingDivergedError(PipelineError):
    """The loss became NaN or infinite (no loss scaling explains an unscaled non-finite loss), or grew
    far past its starting level."""


class DivergenceCheck:
    """Stops a run whose loss is NaN or infinite, or has grown past train.divergence_factor times its
    starting level: the first step's loss in this process, and at least chance (ln of the class count),
    so a resumed, nearly converged run is not held to its own low level."""

    def __init__(self, factor: float | None, learning_rate: float, num_classes: int) -> None:
        self.factor, self.learning_rate, self.num_classes, self.start_loss = factor, learning_rate, num_classes, None

    def check(self, losses: np.ndarray, first_step: int) -> None:
        """Raises TrainingDivergedError naming the step; `losses` are steps first_step, first_step+1, ..."""
        if self.start_loss is None and np.isfinite(losses[0]):
            self.start_loss = max(float(losses[0]), math.log(self.num_classes))
        fix = f"lower train.learning_rate (now {self.learning_rate})"
        if not np.isfinite(losses).all():
            bad = int(np.argmin(np.isfinite(losses)))
            raise TrainingDivergedError(f"loss is {losses[bad]} at step {first_step + bad}; {fix}")
        if self.factor and self.start_loss is not None and losses.max() > self.factor * self.start_loss:
            bad = int(np.argmax(losses > self.factor * self.start_loss))
            raise TrainingDivergedError(
                f"loss grew to {losses[bad]:.3g} at step {first_step + bad}, over {self.factor:g}x its starting "
                f"level {self.start_loss:.3g} (train.divergence_factor); {fix}")


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
    warmup_calls: int  # calls that compiled a program (the first of each step count), kept out of step times
    jit: compile_mode.Choice
    skipped_steps: int = 0
    loss_scale: float | None = None
    peak_rss_mb: float | None = None  # the process's own peak, whatever the device
    peak_tensor_mb: float | None = None  # TensorFlow's allocator over the timed training calls, the split left out
    resident_tensor_mb: float | None = None  # allocated between calls: weights, optimizer and loss-scale state
    step_transient_mb: float | None = None  # what a timed call allocated over what was there before it (median)
    split_tensor_mb: float | None = None  # the device-resident training split, left out of the two figures above
    peak_tensor_mb_per_device: dict[str, float] = dataclasses.field(default_factory=dict)  # several GPUs only
    memory_estimate: memory.Estimate | None = None  # where the step's memory goes, from shapes and dtypes
    target_summary: target.TargetSummary | None = None  # evaluations during training and the time to target accuracy

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
            "model/parameters": self.model.count_params(),
        }
        if self.peak_tensor_mb is not None:
            metrics |= {"train/peak_tensor_mb": self.peak_tensor_mb,
                        "train/resident_tensor_mb": self.resident_tensor_mb,
                        "train/step_transient_mb": self.step_transient_mb,
                        "train/split_tensor_mb": self.split_tensor_mb}
            metrics |= {f"train/peak_tensor_mb/{name.replace(':', '_')}": value
                        for name, value in self.peak_tensor_mb_per_device.items()}
            if self.memory_estimate:
                metrics |= self.memory_estimate.metrics(self.step_transient_mb)
        if self.peak_rss_mb is not None:
            metrics["train/peak_rss_mb"] = self.peak_rss_mb
        if self.loss_scale is not None:
            metrics["train/loss_scale"] = self.loss_scale
            metrics["train/skipped_steps"] = self.skipped_steps
        return metrics | self.jit.metrics() | (self.target_summary.metrics() if self.target_summary else {})

    def tags(self) -> dict[str, str]:
        return ({"train.peak_memory_source": self.peak_memory_source} | self.jit.tags()
                | (self.target_summary.tags() if self.target_summary else {}))


def train(model: keras.Model, datasets: data.Datasets, train_config: TrainConfig, policy: str,
          log_metric: MetricSink | None = None, optimizer=None, start_step: int = 0,
          on_steps_done: Callable[[int], None] | None = None, strategy=None,
          progress: ProgressSink | None = None, calls: steps.Calls | None = None,
          start_elapsed_s: float = 0.0) -> TrainResult:
    """Trains for train.epochs passes, or train.max_steps optimizer steps if that comes first; with
    train.target_accuracy, until an evaluation reaches it (train.stop_at_target).

    Args:
        model: built under `policy`.
        datasets: the training split is read from `datasets.train`.
        train_config: the train config group.
        policy: the precision policy the model was built under.
        log_metric: receives the train/loss points, in one batch an epoch (or every 30 s) and at the end, and
            each evaluation's accuracy and the clock's seconds (train/elapsed_s) when it happens.
        optimizer: an optimizer to continue with (a restored checkpoint's); a new one if None.
        start_step: steps already taken (resuming); the data order continues from there.
        on_steps_done: called with the step count and the clock's seconds after every call (checkpointing).
        strategy: the tf.distribute strategy the model and optimizer were built under (None: no
            strategy); each of its replicas takes an equal share of the batch size.
        progress: receives what the loop already knows after every call (no extra host sync).
        calls: the compiled calls of this model and optimizer, kept from an earlier job; new ones if None.
        start_elapsed_s: the clock's seconds before `start_step` (a resumed job's earlier processes), so the time
            to target counts the whole training.

    Raises:
        preemption.JobStopped: a signal came; it carries the step the model is at and the clock's seconds.
    """
    optimizer = optimizer or steps.make_optimizer(policy, train_config.learning_rate)
    if not optimizer.built:  # its state must exist before the jit probe saves and restores it
        with distribute.scope(strategy):
            optimizer.build(model.trainable_variables)
    batch_size = datasets.batch_size
    order = batch_order.BatchOrder(len(datasets.train.labels), batch_size, _batch_shape(strategy, batch_size),
                                   train_config.seed)
    total_steps = min(train_config.epochs * order.steps_per_epoch, train_config.max_steps or math.inf)
    calls = calls or steps.Calls(model, optimizer, strategy)
    split_name, evaluation_split = datasets.during_training
    evaluations = target.Evaluations(train_config.target_accuracy, train_config.eval_every_steps,
                                     train_config.stop_at_target, order.steps_per_epoch, split_name)
    tensor_devices = device.tensor_devices(strategy)
    # Tensors of earlier code that are already garbage would otherwise be freed mid-reading (the collector runs
    # when the split's arrays are made) and hide the split's own allocation.
    gc.collect()
    before_split = {name: device.tensor_memory_mb(name)[0] for name in tensor_devices}
    split_on_device = steps.device_split(datasets.train, strategy)  # one copy, shared by the probe's calls
    evaluation_on_device = steps.device_split(evaluation_split) if evaluations.every else None
    # What the allocator gave the splits (more than their bytes: it rounds a large request up to its region).
    split_mb = {name: device.tensor_memory_mb(name)[0] - before_split[name] for name in tensor_devices}
    choice = _choose_jit_mode(calls, split_on_device, train_config, policy, order, start_step, tensor_devices)
    for probed in choice.step_ms if choice.source == "probe" else ():
        calls.compiled[JitCompile(probed)].add((choice.compiled_steps, order.batch_shape))
    train_call = calls.bound(choice.mode, split_on_device)
    compiled_shapes = calls.compiled[choice.mode]
    calls_made: list[target.TimedCall] = []
    loss_points = []
    step, loss_value, steady_examples_per_sec, stop = start_step, math.nan, None, False
    last_flush = time.monotonic()
    divergence = DivergenceCheck(train_config.divergence_factor, train_config.learning_rate, datasets.num_classes)
    device.reset_peak_memory()
    tensor_memory = memory.CallMemory(tensor_devices, excluded_mb=split_mb)
    clock_start = time.perf_counter() - start_elapsed_s  # time to target: from the first training call
    try:
        with preemption.at_step_boundaries():  # a signal is taken between calls, with the step it leaves
            while step < total_steps and not stop:
                step_count = min(train_config.steps_per_call, total_steps - step,
                                 _steps_to_boundary(step, train_config.checkpoint_every_steps))
                tensor_memory.before_call()
                started = time.perf_counter()
                losses = train_call(order.indices(step, step_count)).numpy()  # the call's one host sync
                ended = time.perf_counter()
                # The first call of each shape (step count, batch) compiles a program: warm-up, not step time.
                call = target.TimedCall(step_count, ended - started, ended - clock_start,
                                        compiled=(step_count, order.batch_shape) not in compiled_shapes)
                calls_made.append(call)
                tensor_memory.after_call(compiled=call.compiled)
                compiled_shapes.add((step_count, order.batch_shape))
                loss_points += [(step + offset + 1, float(loss)) for offset, loss in enumerate(losses)
                                if (step + offset + 1) % train_config.log_every_steps == 0]
                epoch_ended = (step + step_count) // order.steps_per_epoch > step // order.steps_per_epoch
                step += step_count
                loss_value = float(losses[-1])
                divergence.check(losses, first_step=step - step_count + 1)
                if log_metric and loss_points and (epoch_ended or time.monotonic() - last_flush > _FLUSH_SECONDS):
                    log_metric("train/loss", loss_points)  # batched: no per-step store round trips
                    loss_points, last_flush = [], time.monotonic()
                if on_steps_done:
                    on_steps_done(step, time.perf_counter() - clock_start)
                preemption.check(step, time.perf_counter() - clock_start)
                if evaluations.due(step - step_count, step, total_steps):
                    stop = _evaluate(calls, evaluation_on_device, batch_size, step, clock_start, evaluations,
                                     log_metric)
                if not call.compiled:  # a compiling call's rate is mostly its compile: progress shows the last steady
                    steady_examples_per_sec = step_count * batch_size / call.seconds
                if progress:
                    progress(step, total_steps, (step - 1) // order.steps_per_epoch, loss_value,
                             steady_examples_per_sec, evaluations.done[-1].accuracy if evaluations.done else None)
        preemption.check(step, time.perf_counter() - clock_start)  # a signal during the last call
    finally:
        if log_metric and loss_points:  # at the end, and on Ctrl-C or an error: keep what was measured
            log_metric("train/loss", loss_points)
    if not calls_made:
        raise ValueError("training ran no step; raise train.epochs or train.max_steps")
    trained = _summarize(model, optimizer, step, loss_value, calls_made, batch_size, choice, tensor_memory)
    trained.target_summary = evaluations.summary(calls_made, batch_size)
    # For one replica's share of the batch: what each GPU of a strategy holds.
    trained.memory_estimate = memory.estimate(model, optimizer, order.batch_shape[-1])
    budget, held = train_config.memory_budget_mb, trained.peak_tensor_mb + trained.split_tensor_mb
    if budget and held > budget:  # auto keeps to it (the probe counts the split too); a named mode may not
        logger.warning("training held up to %.1f MiB of tensors (the split included), over train.memory_budget_mb=%g "
                       "(mode %s)", held, budget, choice.mode)
    return trained


def _batch_shape(strategy, batch_size: int) -> tuple[int, ...]:
    if strategy is None:
        return (batch_size,)
    return (strategy.num_replicas_in_sync, distribute.replica_batch_size(strategy, batch_size))


def _choose_jit_mode(calls: steps.Calls, split_on_device: tuple, train_config: TrainConfig, policy: str,
                     order: batch_order.BatchOrder, start_step: int, tensor_devices: list[str]) -> compile_mode.Choice:
    return compile_mode.choose(
        jit_mode(train_config.jit_compile),
        compile_mode.candidate_modes(calls.model, calls.strategy),
        build_call=lambda mode: calls.bound(mode, split_on_device),
        indices_for=lambda step_count: order.indices(start_step, step_count),
        steps_per_call=train_config.steps_per_call,
        variables=[*calls.model.variables, *calls.optimizer.variables],
        cache_file=train_config.jit_cache_file,
        key=compile_mode.cache_key(calls.model, policy, order.batch_shape[-1], train_config.steps_per_call,
                                   calls.strategy),
        memory_budget_mb=train_config.memory_budget_mb,
        devices=tuple(tensor_devices),
    )


def _evaluate(calls: steps.Calls, split_on_device: tuple, batch_size: int, step: int, clock_start: float,
              evaluations: target.Evaluations, log_metric: MetricSink | None) -> bool:
    """Evaluates the model as it is after `step` steps, on the clock; True when training should stop."""
    started = time.perf_counter()
    accuracy, traced = calls.accuracy(split_on_device, batch_size)
    ended = time.perf_counter()
    if log_metric:  # now, not batched: MLflow's charts then show it at its own time
        log_metric(evaluations.metric, [(step, accuracy)])
        log_metric("train/elapsed_s", [(step, ended - clock_start)])
    return evaluations.record(target.Evaluation(step, accuracy, elapsed_s=ended - clock_start,
                                                seconds=ended - started, compiled=traced))


def _steps_to_boundary(step: int, every: int | None) -> int:
    return every - step % every if every else math.inf


def _summarize(model, optimizer, step, loss_value, calls_made: list[target.TimedCall], batch_size,
               choice: compile_mode.Choice, tensor_memory: memory.CallMemory) -> TrainResult:
    timed = [call for call in calls_made if not call.compiled] or calls_made
    seconds, step_counts = np.array([call.seconds for call in timed]), np.array([call.steps for call in timed])
    per_step_seconds = seconds / step_counts
    peak_memory_mb, peak_memory_source = device.read_peak_memory_mb()
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    return TrainResult(
        model=model,
        optimizer=optimizer,
        steps=step,
        final_loss=loss_value,
        step_time_ms=float(np.median(per_step_seconds) * 1000),
        step_time_ms_p90=float(np.percentile(per_step_seconds, 90) * 1000),
        examples_per_sec=float(step_counts.sum() * batch_size / seconds.sum()),
        peak_memory_mb=peak_memory_mb,
        peak_memory_source=peak_memory_source,
        peak_rss_mb=device.read_peak_rss_mb(),
        peak_tensor_mb=tensor_memory.peak_mb(),
        resident_tensor_mb=tensor_memory.resident_mb,
        step_transient_mb=tensor_memory.transient_mb(),
        peak_tensor_mb_per_device=tensor_memory.per_device_mb(),
        split_tensor_mb=sum(tensor_memory.excluded_mb.values()),
        warmup_seconds=float(sum(call.seconds for call in calls_made if call.compiled)),
        warmup_calls=sum(call.compiled for call in calls_made),
        jit=choice,
        skipped_steps=step - int(optimizer.iterations.numpy()) if loss_scaled else 0,
        loss_scale=float(optimizer.dynamic_scale.numpy()) if loss_scaled else None,
    )
