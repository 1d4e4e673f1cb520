"""Where a training step's memory goes: an estimate from the built model and policy, set beside what
TensorFlow's allocator measures; one step's peak at a given batch; the largest batch that fits a budget.

The estimate splits a step's memory the way precision changes it. Resident between steps: the
weights in their variable dtype (float32 under the mixed policies) and the optimizer's state.
Allocated for the step and freed after it (the step transient): the low-precision copies of the
weights each step casts, the gradients, and the activations. Activations are each layer's output at
its compute dtype (kept for the backward pass), the input batch at the first layer's dtype (the
float32 batch is freed once cast), and two buffers the size of the widest layer's output (the
gradient arriving at a layer and the one it passes on). Reshapes are views and take nothing.
Mixed precision halves activations and costs weight copies: which one dominates decides the sign.
Where a policy's arithmetic is emulated (float16 on a CPU without AVX-512 FP16), TensorFlow converts
through float32 workspaces the estimate does not model: the logged ratio measured/estimate shows it.
"""

import dataclasses
import logging
import math
import statistics
import time

import keras
import tensorflow as tf

from pipeline import PipelineError
from pipeline.core import device

logger = logging.getLogger("pipeline")

MIB = 2**20
_VIEWS = (keras.layers.InputLayer, keras.layers.Flatten, keras.layers.Reshape)


class MemoryBudgetError(PipelineError):
    """No compile mode or batch size fits train.memory_budget_mb."""


@dataclasses.dataclass
class Estimate:
    """MiB per part of a training step, from the model's shapes and dtypes."""

    parameters_mb: float  # the weights, in their variable dtype: resident
    optimizer_slots_mb: float  # the optimizer's state (Adam's two moments, counters, loss scale): resident
    weight_copies_mb: float  # the weights cast to the compute dtype, made each step
    gradients_mb: float  # the weights' gradients (float32, and the low-precision ones they come from)
    activations_mb: float  # layer outputs, the input batch and the backward pass's buffers

    @property
    def transient_mb(self) -> float:
        return self.weight_copies_mb + self.gradients_mb + self.activations_mb

    def metrics(self, measured_transient_mb: float | None = None) -> dict[str, float]:
        metrics = {f"memory/estimate/{name.removesuffix('_mb')}_mb": value
                   for name, value in dataclasses.asdict(self).items()}
        metrics["memory/estimate/transient_mb"] = self.transient_mb
        if measured_transient_mb is not None and self.transient_mb:
            metrics["memory/measured_over_estimate"] = measured_transient_mb / self.transient_mb
        return metrics


def estimate(model: keras.Model, optimizer, batch_size: int) -> Estimate | None:
    """The estimate for one replica's `batch_size`; None for a model whose layers' outputs are unknown
    (a subclassed model that was never called symbolically)."""
    try:
        outputs = [(layer, math.prod(layer.output.shape[1:])) for layer in model.layers
                   if not isinstance(layer, _VIEWS)]
        input_elements = math.prod(model.inputs[0].shape[1:])
    except (AttributeError, ValueError, TypeError):
        return None
    copies = gradients = 0
    for layer in model.layers:
        for variable in layer.trainable_weights:
            size = math.prod(variable.shape)
            gradients += size * _bytes(variable.dtype)
            if layer.compute_dtype != variable.dtype:  # cast each step; its gradient comes in the compute dtype
                copies += size * _bytes(layer.compute_dtype)
                gradients += size * _bytes(layer.compute_dtype)
    first_dtype = outputs[0][0].compute_dtype if outputs else "float32"
    output_bytes = [elements * _bytes(layer.compute_dtype) for layer, elements in outputs]
    per_example = sum(output_bytes) + input_elements * _bytes(first_dtype) + 2 * max(output_bytes, default=0)
    return Estimate(
        parameters_mb=sum(math.prod(variable.shape) * _bytes(variable.dtype) for variable in model.variables) / MIB,
        optimizer_slots_mb=sum(math.prod(variable.shape) * _bytes(variable.dtype)
                               for variable in optimizer.variables) / MIB,
        weight_copies_mb=copies / MIB,
        gradients_mb=gradients / MIB,
        activations_mb=batch_size * per_example / MIB,
    )


def step_peak_mb(call, indices, devices: list[str]) -> float:
    """The allocators' peak over one call of a compiled (already warmed-up) training call, summed over devices.

    Raises:
        tf.errors.ResourceExhaustedError: the call did not fit the device (a GPU's out-of-memory).
    """
    device.reset_tensor_peak(*devices)
    call(indices).numpy()
    return device.tensor_peak_mb(devices)


class CallMemory:
    """What TensorFlow's allocators hold around each training call: the peak during the call, the call's own
    allocation (its peak minus what was allocated just before it, so tensors of earlier code freed meanwhile
    do not count), and the least allocated between calls. Compiling calls are kept apart from timed ones.
    The peak is the most over the calls (what must fit); a call's own allocation is given as its median
    over the calls, as the step time is: the order in which a step's independent ops run varies it by up
    to a fifth from step to step.

    `excluded_mb` (per device) is left out of the peak and the resident figure: the device-resident training
    split, which is data, the same under every policy, and logged apart."""

    def __init__(self, devices: list[str], excluded_mb: dict[str, float] | None = None) -> None:
        self.devices = devices
        self.excluded_mb = excluded_mb or {}
        self.peaks: dict[str, dict[str, float]] = {"timed": {}, "warmup": {}}  # per device
        self.transients: dict[str, list[float]] = {"timed": [], "warmup": []}
        self.resident_mb = math.inf
        self._before = 0.0

    def before_call(self) -> None:
        self._before = sum(device.tensor_memory_mb(name)[0] - self.excluded_mb.get(name, 0.0) for name in self.devices)
        self.resident_mb = min(self.resident_mb, self._before)
        device.reset_tensor_peak(*self.devices)

    def after_call(self, compiled: bool) -> None:
        kind = "warmup" if compiled else "timed"
        peaks = {name: device.tensor_memory_mb(name)[1] - self.excluded_mb.get(name, 0.0) for name in self.devices}
        for name, peak in peaks.items():
            self.peaks[kind][name] = max(self.peaks[kind].get(name, 0.0), peak)
        self.transients[kind].append(sum(peaks.values()) - self._before)

    def _kind(self) -> str:
        return "timed" if self.peaks["timed"] else "warmup"  # a job of compiling calls alone has only those

    def peak_mb(self) -> float:
        return sum(self.peaks[self._kind()].values())

    def transient_mb(self) -> float:
        return float(statistics.median(self.transients[self._kind()]))

    def per_device_mb(self) -> dict[str, float]:
        """Each allocator's peak, where there are several (the GPUs of a strategy)."""
        peaks = self.peaks[self._kind()]
        return dict(peaks) if len(peaks) > 1 else {}


@dataclasses.dataclass
class BatchSearch:
    """The largest batch whose step fits a budget, and what each tried batch took."""

    budget_mb: float
    max_batch: int | None  # None: not even batch 1 fits
    peak_mb: float | None  # the step peak at max_batch
    tried: dict[int, float | None]  # batch size -> step peak (None: out of memory)
    seconds: float


def largest_batch(peak_at, budget_mb: float, start: int, limit: int = 2**20, precision: float = 0.03) -> BatchSearch:
    """Doubles (or halves) from `start` to bracket the budget, then bisects to within `precision` of the answer.

    Args:
        peak_at: batch size -> the step peak in MiB at it, or None where the step ran out of memory.
        budget_mb: the most a step may take.
        start: the first batch size tried (the job's own).
        limit: the largest batch size tried.
    """
    started, tried = time.perf_counter(), {}

    def fits(batch: int) -> bool:
        if batch not in tried:
            tried[batch] = peak_at(batch)
            logger.info("batch %d: %s", batch, "out of memory" if tried[batch] is None else
                        f"step peak {tried[batch]:.1f} MiB{'' if tried[batch] <= budget_mb else ' (over)'}")
        return tried[batch] is not None and tried[batch] <= budget_mb

    low, high = (start, None) if fits(start) else (None, start)
    while low is None and high > 1:
        high_next = max(1, high // 2)
        low, high = (high_next, high) if fits(high_next) else (None, high_next)
    while high is None and low < limit:
        low, high = (min(limit, low * 2), None) if fits(min(limit, low * 2)) else (low, min(limit, low * 2))
    while low is not None and high is not None and high - low > max(1, int(low * precision)):
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return BatchSearch(budget_mb=budget_mb, max_batch=low, peak_mb=tried.get(low), tried=tried,
                       seconds=time.perf_counter() - started)


def out_of_memory(error: BaseException) -> bool:
    return isinstance(error, tf.errors.ResourceExhaustedError)


def _bytes(dtype) -> int:
    return tf.as_dtype(keras.backend.standardize_dtype(dtype)).size
