"""train.jit_compile=auto: each job measures the compilation modes on its own model, policy, batch
size and data, and trains in the fastest.

The fastest mode depends on all of these and on the processor (whole-call XLA wins for small
dense models, loses badly for convolutions on a CPU; bfloat16 convolutions are fast without XLA on
a CPU with AVX-512 BF16 and slow with it), so no fixed default is right. The probe runs real
training calls, then puts the weights and the optimizer state back, so what the job learns is what
the chosen mode alone would have learned. Decisions are cached per processor, TensorFlow version,
model, policy, per-replica batch, steps per call and strategy; a later job with the same key
skips the probe.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import pathlib
import platform
import tempfile
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from pipeline.core import device
from pipeline.core.config import JitCompile
from pipeline.training import memory

logger = logging.getLogger("pipeline")

CALL_SECONDS = 0.5  # longest a probe call should take: slow steps are probed with fewer steps a call
TIMED_SECONDS = 0.3  # timed calls per mode: until this many seconds, at least 2 calls, at most 10
DROP_FACTOR = 3.0  # a mode whose first timed call is this much slower than the best so far is not timed further


@dataclasses.dataclass
class Choice:
    """The mode a job trains in, how it was decided, and what the probe measured."""

    mode: JitCompile
    source: str  # forced (train.jit_compile named a mode) | probe | cache | only_candidate (multi-worker)
    step_ms: dict[str, float] = dataclasses.field(default_factory=dict)  # per probed mode
    peak_mb: dict[str, float] = dataclasses.field(default_factory=dict)  # the allocator's peak over a call, per mode
    failed: dict[str, str] = dataclasses.field(default_factory=dict)  # modes that did not compile, and why
    probe_seconds: float = 0.0
    compiled_steps: int | None = None  # the step count the probe compiled every mode it timed for

    def metrics(self) -> dict[str, float]:
        metrics = {f"train/jit_probe/{mode}_step_ms": value for mode, value in self.step_ms.items()}
        metrics |= {f"train/jit_probe/{mode}_peak_mb": value for mode, value in self.peak_mb.items()}
        if self.source in ("probe", "cache"):
            metrics["train/jit_probe_seconds"] = self.probe_seconds
        return metrics

    def tags(self) -> dict[str, str]:
        return {"train.jit_compile_chosen": str(self.mode), "train.jit_compile_source": self.source} | {
            f"train.jit_probe.{mode}_failed": reason[:500] for mode, reason in self.failed.items()}


def candidate_modes(model, strategy) -> list[JitCompile]:
    """The modes worth probing: whole-call XLA is ruled out under a strategy (it cannot hold the
    cross-replica sum) and for convolutions on a CPU (measured 10-30x slower than the best mode there,
    and its compile alone takes seconds). Multi-worker jobs train per-step XLA without probing."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return [JitCompile.step]  # every worker must run the same program, and timings differ by host
    modes = [JitCompile.false, JitCompile.step, JitCompile.true]
    has_convolutions = any("Conv" in type(layer).__name__ for layer in model.layers)
    if strategy is not None or (has_convolutions and not tf.config.list_physical_devices("GPU")):
        modes.remove(JitCompile.true)
    return modes


def choose(jit_compile: JitCompile, candidates: list[JitCompile], build_call: Callable[[JitCompile], Callable],
           indices_for: Callable[[int], tf.Tensor], steps_per_call: int, variables: list,
           cache_file: str | None, key: dict, memory_budget_mb: float | None = None,
           devices: tuple[str, ...] = ("CPU:0",)) -> Choice:
    """The mode to train in: the forced one, or the fastest (probed, or decided earlier for `key`) whose
    step peak fits `memory_budget_mb`.

    Args:
        jit_compile: train.jit_compile (auto or a mode).
        candidates: the modes to probe (candidate_modes).
        build_call: makes the compiled training call of a mode (steps.make_call and friends).
        indices_for: the batch indices of a call of so many steps, for the probe.
        steps_per_call: train.steps_per_call, the shape training's calls take.
        variables: the model's and the optimizer's variables, restored after each probed mode.
        cache_file: the decisions file, or None for no cache.
        key: what decides the answer (see cache_key).
        memory_budget_mb: train.memory_budget_mb: the most TensorFlow's allocator may hold during a call.
        devices: the allocators whose peaks count (device.tensor_devices).

    Raises:
        memory.MemoryBudgetError: no mode's peak fits the budget.
    """
    if jit_compile != JitCompile.auto:
        return Choice(mode=jit_compile, source="forced")
    if len(candidates) == 1:
        return Choice(mode=candidates[0], source="only_candidate")
    started = time.perf_counter()
    cache = DecisionCache(cache_file) if cache_file else None
    cached = cache.get(key) if cache else None
    if cached and cached["mode"] in candidates and (memory_budget_mb is None or "peak_mb" in cached):
        choice = Choice(mode=JitCompile(cached["mode"]), source="cache", step_ms=cached["step_ms"],
                        peak_mb=cached.get("peak_mb", {}))
        choice.mode = _fastest_fitting(choice, memory_budget_mb)
        choice.probe_seconds = time.perf_counter() - started
        logger.info("train.jit_compile=auto: training in mode %s (decided earlier, %s)%s", choice.mode, cache.path,
                    _budget_words(choice, memory_budget_mb))
        return choice
    choice = probe(candidates, build_call, indices_for, steps_per_call, variables, devices)
    choice.probe_seconds = time.perf_counter() - started
    if cache and choice.step_ms:
        cache.put(key, {"mode": str(choice.mode), "step_ms": choice.step_ms, "peak_mb": choice.peak_mb})
    if choice.step_ms:
        choice.mode = _fastest_fitting(choice, memory_budget_mb)
    figures = ", ".join(f"{mode} {step_ms:.3g}" for mode, step_ms in choice.step_ms.items())
    logger.info("train.jit_compile=auto: training in mode %s (ms per step: %s; probe %.1f s)%s", choice.mode,
                figures, choice.probe_seconds, _budget_words(choice, memory_budget_mb))
    return choice


def _fastest_fitting(choice: Choice, memory_budget_mb: float | None) -> JitCompile:
    """The fastest probed mode whose step peak fits the budget (any, without one)."""
    fitting = {mode: step_ms for mode, step_ms in choice.step_ms.items()
               if memory_budget_mb is None or choice.peak_mb.get(mode, 0.0) <= memory_budget_mb}
    if not fitting:
        smallest = min(choice.peak_mb, key=choice.peak_mb.get)
        raise memory.MemoryBudgetError(
            f"no compile mode fits train.memory_budget_mb={memory_budget_mb:g}: the smallest step peak was "
            f"{choice.peak_mb[smallest]:.1f} MiB (mode {smallest}); raise the budget or lower data.batch_size")
    return JitCompile(min(fitting, key=fitting.get))


def _budget_words(choice: Choice, memory_budget_mb: float | None) -> str:
    if not choice.peak_mb:
        return ""
    peaks = ", ".join(f"{mode} {peak:.0f}" for mode, peak in choice.peak_mb.items())
    if memory_budget_mb is None:
        return f"; step peak MiB: {peaks}"
    over = [mode for mode, peak in choice.peak_mb.items() if peak > memory_budget_mb]
    return (f"; step peak MiB: {peaks}, budget {memory_budget_mb:g}"
            + (f": {' and '.join(over)} over it" if over else ": all fit"))


def probe(candidates: list[JitCompile], build_call, indices_for, steps_per_call: int, variables: list,
          devices: tuple[str, ...] = ("CPU:0",)) -> Choice:
    """Times real training calls in each candidate mode and reads their peak memory; returns the fastest."""
    saved = [variable.numpy() for variable in variables]
    step_count = _probe_step_count(build_call(JitCompile.false), indices_for, steps_per_call)
    _restore(variables, saved)
    indices = indices_for(step_count)
    step_ms, peak_mb, failed = {}, {}, {}
    for mode in candidates:
        try:
            call = build_call(mode)
            call(indices).numpy()  # compiles
            device.reset_tensor_peak(*devices)
            step_ms[str(mode)] = _time(call, indices, step_count, best_ms=min(step_ms.values(), default=None))
            peak_mb[str(mode)] = device.tensor_peak_mb(devices)
        except Exception as error:  # a mode that cannot compile here is skipped, never a failed job
            failed[str(mode)] = f"{type(error).__name__}: {error}".splitlines()[0]
            logger.warning("train.jit_compile=auto: mode %s failed here and is skipped (%s)", mode, failed[str(mode)])
        finally:
            _restore(variables, saved)
    if not step_ms:
        return Choice(mode=JitCompile.false, source="probe", failed=failed)
    best = JitCompile(min(step_ms, key=step_ms.get))
    return Choice(mode=best, source="probe", step_ms=step_ms, peak_mb=peak_mb, failed=failed,
                  compiled_steps=step_count)


def _probe_step_count(estimate_call, indices_for, steps_per_call: int) -> int:
    """Steps per probe call: training's own steps_per_call (its compiled shape is then reused), or
    fewer when one call would take longer than CALL_SECONDS; per-call overhead only matters when
    steps are short, and then the probe does use training's shape."""
    one_step = indices_for(1)
    estimate_call(one_step).numpy()  # traces
    started = time.perf_counter()
    estimate_call(one_step).numpy()
    step_seconds = time.perf_counter() - started
    return int(max(1, min(steps_per_call, CALL_SECONDS // max(step_seconds, 1e-9))))


def _time(call, indices, step_count: int, best_ms: float | None) -> float:
    """Milliseconds per step, the fastest of the timed calls."""
    seconds = []
    while sum(seconds) < TIMED_SECONDS or len(seconds) < 2:
        started = time.perf_counter()
        call(indices).numpy()
        seconds.append(time.perf_counter() - started)
        too_slow = best_ms is not None and seconds[0] / step_count * 1000 > DROP_FACTOR * best_ms
        if too_slow or len(seconds) == 10:
            break
    return min(seconds) / step_count * 1000


def _restore(variables: list, values: list[np.ndarray]) -> None:
    for variable, value in zip(variables, values):
        variable.assign(value)


def cache_key(model, policy: str, replica_batch_size: int, steps_per_call: int, strategy) -> dict:
    """What decides the fastest mode: the device, TensorFlow, the model, policy, per-replica batch,
    steps per call and strategy. The model by its layers' configurations (names left out)."""
    layers = [(type(layer).__name__, {name: value for name, value in layer.get_config().items() if name != "name"})
              for layer in model.layers]
    gpus = tf.config.list_physical_devices("GPU")
    return {
        "device": (tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus
                   else f"{device.describe_device()['device.cpu']} {platform.machine()}"),
        "cpu_flags": hashlib.sha256(" ".join(sorted(device.read_cpu_flags())).encode()).hexdigest()[:16],
        "tensorflow": tf.__version__,
        "model": hashlib.sha256(json.dumps(layers, sort_keys=True, default=str).encode()).hexdigest()[:16],
        "policy": policy,
        "replica_batch_size": replica_batch_size,
        "steps_per_call": steps_per_call,
        "strategy": "none" if strategy is None else f"{type(strategy).__name__}x{strategy.num_replicas_in_sync}",
    }


class DecisionCache:
    """A small JSON file of decisions, safe when parallel jobs read and write it (a lock file and an
    atomic rename); a file that cannot be read or written is passed over with a warning."""

    def __init__(self, path: str) -> None:
        self.path = pathlib.Path(path).expanduser()

    def get(self, key: dict) -> dict | None:
        try:
            with self._locked():
                return self._read().get(self._name(key))
        except OSError as error:
            logger.warning("train.jit_cache_file=%s cannot be read (%s); probing", self.path, error)
            return None

    def put(self, key: dict, decision: dict) -> None:
        try:
            with self._locked():
                decisions = self._read()
                decisions[self._name(key)] = decision | {"key": key}
                handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".jit-cache-")
                with os.fdopen(handle, "w") as file:
                    json.dump(decisions, file, indent=1, sort_keys=True)
                os.replace(temporary, self.path)
        except OSError as error:
            logger.warning("train.jit_cache_file=%s cannot be written (%s); the decision is not kept", self.path, error)

    @contextlib.contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            yield

    def _read(self) -> dict:
        try:
            decisions = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as error:
            logger.warning("train.jit_cache_file=%s is not JSON (%s); starting it afresh", self.path, error)
            return {}
        return decisions if isinstance(decisions, dict) else {}

    @staticmethod
    def _name(key: dict) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
