"""The training loop: loss scaling under float16, figures reported, losses recorded in batches."""

import keras
import numpy as np
import pytest
from helpers import tiny_datasets

from pipeline.core import data, model
from pipeline.stages import train
from pipeline.training import batch_order, steps


def test_overflowing_float16_step_is_skipped_not_applied(compose):
    built = model.build_model(compose(["model=mlp"]).model, "mixed_float16", seed=0)
    # A scale this large overflows float16 gradients on the first step.
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-3), initial_scale=2.0**40)
    step = steps.make_step(built, optimizer)
    split = tiny_datasets().train
    images, labels = data.normalize(split.images[:32]), split.labels[:32]
    weights_before = [weight.numpy().copy() for weight in built.weights]

    loss = step(images, labels)

    assert np.isfinite(loss.numpy())
    assert int(optimizer.iterations.numpy()) == 0  # the step was skipped...
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**39  # ...and the scale halved
    for before, after in zip(weights_before, built.weights):
        np.testing.assert_array_equal(before, after.numpy())
    for _ in range(40):  # the scale keeps halving until gradients fit, then steps apply
        step(images, labels)
    assert int(optimizer.iterations.numpy()) > 0
    assert all(np.isfinite(weight.numpy()).all() for weight in built.weights)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_train_reports_its_figures(compose, policy):
    # A forced mode: under auto the probe compiles the program first, and no call is warm-up.
    config = compose(["train.epochs=2", "train.max_steps=12", "train.steps_per_call=3", "train.log_every_steps=4",
                      "train.jit_compile=step"])
    recorded = []
    result = train.train(
        model.build_model(config.model, policy, seed=0), tiny_datasets(), config.train, policy,
        log_metric=lambda name, points: recorded.append((name, points)),
    )
    assert result.steps == 12
    # Once an epoch (8 steps here), never once a step or a call.
    assert [(name, [step for step, _ in points]) for name, points in recorded] == [
        ("train/loss", [4, 8]), ("train/loss", [12])]
    assert all(np.isfinite(value) for _, points in recorded for _, value in points)
    metrics = result.metrics()
    assert metrics["train/step_time_ms"] > 0 and metrics["train/step_time_ms_p90"] >= metrics["train/step_time_ms"]
    assert metrics["train/examples_per_sec"] > 0 and metrics["train/peak_memory_mb"] > 0
    assert metrics["train/warmup_seconds"] > 0
    assert ("train/loss_scale" in metrics) == (policy == "mixed_float16")
    if policy == "mixed_float16":
        assert 0 <= metrics["train/skipped_steps"] < 12 and metrics["train/loss_scale"] >= 1


def test_max_steps_caps_training_across_epochs(compose):
    config = compose(["train.epochs=5", "train.max_steps=10"])
    result = train.train(model.build_model(config.model, "float32", seed=0), tiny_datasets(), config.train, "float32")
    assert result.steps == 10  # 8 steps an epoch: the cap lands in the second epoch


def test_progress_never_shows_the_rate_of_a_compiling_call(compose):
    # Calls of 4, 4, 2 steps: the first and the last compile a program (the last is shorter), and a
    # rate taken over a compile reads thousands of times too slow on a short job.
    config = compose(["train.jit_compile=false", "train.epochs=2", "train.max_steps=10", "train.steps_per_call=4"])
    shown = []
    train.train(model.build_model(config.model, "float32", seed=0), tiny_datasets(), config.train, "float32",
                progress=lambda step, total, epoch, loss, examples_per_sec, accuracy: shown.append(
                    (step, examples_per_sec)))
    (first_step, first_rate), (second_step, second_rate), (last_step, last_rate) = shown
    assert (first_step, second_step, last_step) == (4, 8, 10)
    assert first_rate is None  # nothing steady yet
    assert second_rate > 0 and last_rate == second_rate  # the last steady call's rate, carried over


def test_epoch_order_is_a_seeded_permutation():
    first = batch_order.epoch_order(100, seed=3, epoch=0).numpy()
    assert sorted(first.tolist()) == list(range(100))
    np.testing.assert_array_equal(first, batch_order.epoch_order(100, seed=3, epoch=0).numpy())
    assert not np.array_equal(first, batch_order.epoch_order(100, seed=3, epoch=1).numpy())
    assert not np.array_equal(first, batch_order.epoch_order(100, seed=4, epoch=0).numpy())


@pytest.mark.parametrize("jit_compile", ["false", "step", "true"])
def test_steps_per_call_does_not_change_the_result(compose, jit_compile):
    """1, 3 (calls across epoch ends) or 8 steps a call: the same batches in the same order, the same weights."""
    finals = []
    for steps_per_call in (1, 3, 8):
        config = compose(["train.epochs=2", f"train.steps_per_call={steps_per_call}",
                          f"train.jit_compile={jit_compile}"])
        result = train.train(model.build_model(config.model, "float32", seed=0), tiny_datasets(), config.train,
                             "float32")
        finals.append([weight.numpy() for weight in result.model.weights])
    for one_step, *more_steps in zip(*finals):
        for weights in more_steps:
            np.testing.assert_allclose(one_step, weights, rtol=1e-5, atol=1e-6)


def test_non_finite_loss_stops_training_within_a_call(compose):
    config = compose(["train.epochs=3", "train.learning_rate=1e30", "train.steps_per_call=5"])
    with pytest.raises(train.TrainingDivergedError, match=r"loss is nan at step [1-5]; lower train.learning_rate"):
        train.train(model.build_model(config.model, "float32", seed=0), tiny_datasets(), config.train, "float32")


def test_tensor_memory_comes_from_the_allocator_and_shows_what_precision_does(compose):
    """The CNN at batch 256 in graph mode: bfloat16 activations are half of float32's, so what a step allocates
    falls. Compared on the step's own allocation (its peak minus what was allocated just before it), since
    whatever earlier tests left allocated sits in both peaks alike. How these figures agree with an
    independent reading and with the estimate is checked in fresh processes: tests/test_memory_e2e.py."""
    rng = np.random.default_rng(0)
    split = data.Split(rng.integers(0, 256, (512, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 512))
    figures = {}
    for policy in ("float32", "mixed_bfloat16"):
        config = compose(["model=cnn", "data.batch_size=256", "train.max_steps=6", "train.steps_per_call=2"])
        built = model.build_model(config.model, policy, seed=0)
        result = train.train(built, data.Datasets(split, split, 256, num_classes=10), config.train, policy)
        figures[policy] = metrics = result.metrics()
        weights_mb = sum(weight.numpy().nbytes for weight in built.weights) / 2**20
        assert metrics["train/resident_tensor_mb"] >= weights_mb  # the weights at least, between calls
        assert metrics["train/split_tensor_mb"] >= split.images.nbytes / 2**20  # the split on the device, apart
        assert metrics["train/peak_tensor_mb"] >= metrics["train/step_transient_mb"] > 0
        assert metrics["train/peak_rss_mb"] > metrics["train/peak_tensor_mb"]
        # The estimate's parts: the float32 weights exactly, Adam's two moments, low-precision copies when mixed.
        assert metrics["memory/estimate/parameters_mb"] == pytest.approx(weights_mb)
        assert metrics["memory/estimate/optimizer_slots_mb"] >= 2 * weights_mb
        assert (metrics["memory/estimate/weight_copies_mb"] > 0) == (policy != "float32")
        assert metrics["memory/measured_over_estimate"] == pytest.approx(
            metrics["train/step_transient_mb"] / metrics["memory/estimate/transient_mb"])
    ratio = figures["mixed_bfloat16"]["train/step_transient_mb"] / figures["float32"]["train/step_transient_mb"]
    assert ratio <= 0.75, figures  # 0.48 measured
    assert (figures["mixed_bfloat16"]["memory/estimate/activations_mb"]
            < 0.6 * figures["float32"]["memory/estimate/activations_mb"])


@pytest.mark.skipif(not __import__("tensorflow").config.list_physical_devices("GPU"), reason="needs a GPU")
def test_on_a_gpu_the_same_tensor_figures_come_from_its_allocator(compose):
    from pipeline.core import device

    assert device.tensor_device() == "GPU:0"
    config = compose(["train.max_steps=4"])
    result = train.train(model.build_model(config.model, "float32", seed=0), tiny_datasets(), config.train, "float32")
    assert result.metrics()["train/peak_tensor_mb"] > 0 and result.peak_memory_source == "gpu"
    assert device.describe_device()["precision.tf32_enabled"] in ("true", "false")


def test_the_batch_search_brackets_the_budget_then_bisects_and_counts_out_of_memory_as_too_big():
    from pipeline.training import memory

    def peak_at(batch):  # 40 MiB held, 0.3 MiB an example; a device that runs out of memory past 3000
        return None if batch > 3000 else 40 + 0.3 * batch

    search = memory.largest_batch(peak_at, budget_mb=512, start=128)
    assert 40 + 0.3 * search.max_batch <= 512 < 40 + 0.3 * search.max_batch * 1.04  # within 3 % of the answer
    assert search.peak_mb == peak_at(search.max_batch) and set(search.tried) >= {128, 256, 512, 1024, 2048}
    assert memory.largest_batch(peak_at, budget_mb=10_000, start=1024).max_batch >= 2910  # the device's limit
    assert memory.largest_batch(peak_at, budget_mb=512, start=4096).max_batch == search.max_batch  # halves first
    assert memory.largest_batch(peak_at, budget_mb=30, start=64).max_batch is None  # not even batch 1
