"""The training loop: loss scaling under float16, figures reported, losses recorded in batches."""

import keras
import numpy as np
import pytest
from conftest import compose

from pipeline import data, model, train


def tiny_datasets(count=256, batch_size=32):
    rng = np.random.default_rng(0)
    split = data.Split(
        images=rng.integers(0, 256, (count, 28, 28, 1), dtype=np.uint8),
        labels=rng.integers(0, 10, count).astype(np.int64),
    )
    return data.Datasets(
        name="tiny", train=split, test=split,
        train_batches=data.make_batches(split, batch_size, shuffle_buffer=count, seed=0),
        test_batches=data.make_batches(split, batch_size),
    )


def test_overflowing_float16_step_is_skipped_not_applied():
    built = model.build_model(compose(["model=mlp"]).model, "mixed_float16", seed=0)
    # A scale this large overflows float16 gradients on the first step.
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-3), initial_scale=2.0**40)
    train_step = train.make_train_step(built, optimizer, jit_compile=False)
    images, labels = next(iter(tiny_datasets().train_batches))
    weights_before = [weight.numpy().copy() for weight in built.weights]

    loss = train_step(images, labels)

    assert np.isfinite(loss.numpy())
    assert int(optimizer.iterations.numpy()) == 0  # the step was skipped...
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**39  # ...and the scale halved
    for before, after in zip(weights_before, built.weights):
        np.testing.assert_array_equal(before, after.numpy())
    for _ in range(40):  # the scale keeps halving until gradients fit, then steps apply
        train_step(images, labels)
    assert int(optimizer.iterations.numpy()) > 0
    assert all(np.isfinite(weight.numpy()).all() for weight in built.weights)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_train_reports_its_figures(policy):
    config = compose(["train.epochs=2", "train.max_steps=12", "train.warmup_steps=2", "train.log_every_steps=4"])
    recorded = []
    result = train.train(
        model.build_model(config.model, policy, seed=0), tiny_datasets(), config.train, policy,
        log_metric=lambda name, points: recorded.append((name, points)),
    )
    assert result.steps == 12
    # Once an epoch (8 steps here), never once a step.
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


def test_max_steps_caps_training_across_epochs():
    config = compose(["train.epochs=5", "train.max_steps=10"])
    result = train.train(model.build_model(config.model, "float32", seed=0), tiny_datasets(), config.train, "float32")
    assert result.steps == 10  # 8 steps an epoch: the cap lands in the second epoch
