"""`python -m pipeline.max_batch`: the largest batch whose training step fits a memory budget.

    python -m pipeline.max_batch model=cnn train.jit_compile=false train.memory_budget_mb=512
    python -m pipeline.max_batch -m precision=float32,mixed_float16,mixed_bfloat16 train.memory_budget_mb=512

Takes the same overrides as a job. For the configured model, policy and compile mode (each candidate
mode under `auto`) it runs one warm-up and one measured training step per batch size tried,
doubling then bisecting, with no full training; the budget is train.memory_budget_mb, by default a
GPU's memory (required on a CPU, where the host's memory is no device limit). The answer is printed
and logged as an MLflow run: memory/max_batch, memory/max_batch_peak_mb, the examples per second at
that batch, and the step peak of every batch tried (memory/step_peak_mb, its step the batch size), so
MLflow charts peak against batch size.
"""

import functools
import logging
import time

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from pipeline import console, failures
from pipeline.core import config as config_lib

logger = logging.getLogger("pipeline")
_TIMED_CALLS = 3  # steps timed at the answer, for its examples per second


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@failures.reporting_errors
def main(config: DictConfig) -> int | None:
    hydra_config = HydraConfig.get()
    sweep_id = None
    if hydra_config.mode == RunMode.MULTIRUN:
        from pipeline import sweep_callback

        sweep_id = sweep_callback.sweep_id_of(hydra_config)
    config_lib.validate(config, in_sweep=sweep_id is not None)
    console.import_tensorflow()
    return find_max_batch(config, list(hydra_config.overrides.task), sweep_id)


def find_max_batch(config: DictConfig, overrides: list[str], sweep_id: str | None = None) -> int | None:
    """Searches the largest batch in each compile mode, logs the run and prints the answer; returns the batch."""
    from pipeline.core import data, device, model
    from pipeline.tracking import runs, sweeps
    from pipeline.training import compile_mode, memory, steps

    policy = str(config.precision.policy)
    budget_mb = config.train.memory_budget_mb or _gpu_memory_mb()
    if budget_mb is None:
        raise config_lib.ConfigError("pipeline.max_batch on a CPU needs a budget: add train.memory_budget_mb=<MiB> "
                                     "(on a GPU it defaults to the device's memory)")
    run_name = f"max_batch-{config.model.name}-{policy}"
    tags = {"precision.policy": policy, "pipeline.command": "max_batch"}
    if sweep_id:
        tags |= sweeps.sweep_tags(config.tracking, sweep_id)
    with runs.start_run(config.tracking, run_name, tags):
        runs.log_config(config, overrides)
        runs.set_tags(device.describe_device())
        datasets = data.load_datasets(config.data)
        built = model.build_model(config.model, policy, config.train.seed)
        optimizer = steps.make_optimizer(policy, config.train.learning_rate)
        optimizer.build(built.trainable_variables)
        calls = steps.Calls(built, optimizer)
        split_on_device = steps.device_split(datasets.train)
        devices = device.tensor_devices()
        mode = config_lib.jit_mode(config.train.jit_compile)
        modes = compile_mode.candidate_modes(built, None) if mode == config_lib.JitCompile.auto else [mode]
        searches = {}
        for candidate in modes:
            searches[candidate] = memory.largest_batch(
                functools.partial(_step_peak, calls.bound(candidate, split_on_device),
                                  example_count=len(datasets.train.labels), devices=devices),
                budget_mb, start=config.data.batch_size)
        best_mode = max(searches, key=lambda candidate: searches[candidate].max_batch or 0)
        search = searches[best_mode]
        if search.max_batch is None:
            raise memory.MemoryBudgetError(
                f"not even batch 1 fits train.memory_budget_mb={budget_mb:g} for {config.model.name} under {policy}: "
                f"its step peak was {min(peak for peak in search.tried.values() if peak is not None):.1f} MiB; "
                "raise the budget")
        call = calls.bound(best_mode, split_on_device)
        examples_per_sec = _examples_per_sec(call, search.max_batch, len(datasets.train.labels))
        runs.log_metrics({"memory/max_batch": search.max_batch, "memory/max_batch_peak_mb": search.peak_mb,
                          "memory/budget_mb": budget_mb, "memory/max_batch_examples_per_sec": examples_per_sec,
                          "memory/search_seconds": sum(each.seconds for each in searches.values())}
                         | {f"memory/max_batch/{candidate}": each.max_batch or 0
                            for candidate, each in searches.items()})
        runs.log_metric_history("memory/step_peak_mb", sorted(
            (batch, peak) for batch, peak in search.tried.items() if peak is not None))
        runs.set_tags({"train.jit_compile_chosen": str(best_mode)})
    print(f"{config.model.name} {policy} (jit_compile {best_mode}): the largest batch within {budget_mb:g} MiB is "
          f"{search.max_batch} (step peak {search.peak_mb:.1f} MiB, {examples_per_sec:,.0f} examples/s); "
          f"{len(search.tried)} sizes tried in {sum(each.seconds for each in searches.values()):.0f} s", flush=True)
    return search.max_batch


def _batch_indices(batch: int, example_count: int):
    import numpy as np
    import tensorflow as tf

    # Batches larger than the split take examples twice: memory depends on the shape, not on which examples.
    return tf.constant((np.arange(batch) % example_count).astype(np.int32)[None, :])


def _step_peak(call, batch: int, example_count: int, devices: list[str]) -> float | None:
    """The step peak at `batch`, after a warm-up step that compiles; None when the device runs out of memory."""
    from pipeline.training import memory

    indices = _batch_indices(batch, example_count)
    try:
        call(indices).numpy()
        return memory.step_peak_mb(call, indices, devices)
    except Exception as error:
        if memory.out_of_memory(error):
            return None
        raise


def _examples_per_sec(call, batch: int, example_count: int) -> float:
    indices = _batch_indices(batch, example_count)
    started = time.perf_counter()
    for _ in range(_TIMED_CALLS):
        call(indices).numpy()
    return _TIMED_CALLS * batch / (time.perf_counter() - started)


def _gpu_memory_mb() -> float | None:
    """The first GPU's memory as TensorFlow may use it, in MiB; None without a GPU."""
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return None
    from tensorflow.python.client import device_lib  # the one API that reports a GPU's usable memory

    return next(device.memory_limit / 2**20 for device in device_lib.list_local_devices()
                if device.device_type == "GPU")


if __name__ == "__main__":
    main()
