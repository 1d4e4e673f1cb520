"""train.jit_compile=auto: the probe picks the faster mode, caches its decision, skips what fails to
compile, and changes nothing that is learned."""

import functools
import logging
import time

import numpy as np
import pytest
import tensorflow as tf
from helpers import tiny_datasets

from pipeline.core import model
from pipeline.core.config import JitCompile
from pipeline.stages import train
from pipeline.training import batch_order, compile_mode, steps


def probe_with(built, optimizer, datasets, build_call, candidates=(JitCompile.false, JitCompile.step)):
    order = batch_order.BatchOrder(len(datasets.train.labels), datasets.batch_size, (datasets.batch_size,), seed=0)
    return compile_mode.probe(list(candidates), build_call, lambda count: order.indices(0, count), 8,
                         [*built.variables, *optimizer.variables])


@pytest.mark.parametrize("slowed", [JitCompile.false, JitCompile.step])
def test_probe_picks_the_faster_of_two_modes_when_one_is_made_slower(compose, slowed):
    config = compose([])
    built = model.build_model(config.model, "float32", seed=0)
    optimizer = steps.make_optimizer("float32", 1e-3)
    datasets = tiny_datasets()

    def build_call(mode):
        call = functools.partial(steps.make_call(built, optimizer, mode), *steps.device_split(datasets.train))

        def slowed_call(indices):
            time.sleep(0.05)  # far above either mode's few milliseconds
            return call(indices)

        return slowed_call if mode == slowed else call

    choice = probe_with(built, optimizer, datasets, build_call)
    assert choice.mode != slowed and set(choice.step_ms) == {"false", "step"}
    assert choice.step_ms[str(slowed)] > choice.step_ms[str(choice.mode)]


def test_a_mode_that_fails_to_compile_is_skipped_with_a_warning(compose, caplog):
    built = model.build_model(compose([]).model, "float32", seed=0)
    optimizer = steps.make_optimizer("float32", 1e-3)
    datasets = tiny_datasets()

    def build_call(mode):
        if mode == JitCompile.true:
            raise tf.errors.UnimplementedError(None, None, "XLA cannot compile this here")
        return functools.partial(steps.make_call(built, optimizer, mode), *steps.device_split(datasets.train))

    with caplog.at_level(logging.WARNING, logger="pipeline"):
        choice = probe_with(built, optimizer, datasets, build_call, candidates=list(JitCompile)[1:])
    assert choice.mode in (JitCompile.false, JitCompile.step) and "true" not in choice.step_ms
    assert "XLA cannot compile this here" in choice.failed["true"]
    assert "mode true failed here and is skipped" in caplog.text


def test_a_cache_hit_skips_the_probe(compose, tmp_path, monkeypatch):
    config = compose(["train.max_steps=16", f"train.jit_cache_file={tmp_path}/decisions.json",
                      "train.jit_compile=auto"])
    first = train.train(model.build_model(config.model, "float32", seed=0), tiny_datasets(), config.train, "float32")
    assert first.jit.source == "probe" and (tmp_path / "decisions.json").exists()

    def no_probe(*arguments, **keywords):
        raise AssertionError("probed despite a cached decision")

    monkeypatch.setattr(compile_mode, "probe", no_probe)
    second = train.train(model.build_model(config.model, "float32", seed=0), tiny_datasets(), config.train, "float32")
    assert second.jit.source == "cache" and second.jit.mode == first.jit.mode
    assert second.jit.probe_seconds < 0.2
    # Another policy is another key: probed afresh.
    monkeypatch.undo()
    other = train.train(model.build_model(config.model, "mixed_bfloat16", seed=0), tiny_datasets(), config.train,
                        "mixed_bfloat16")
    assert other.jit.source == "probe"


def test_a_forced_mode_is_never_probed(compose, monkeypatch):
    monkeypatch.setattr(compile_mode, "probe", lambda *arguments, **keywords: pytest.fail("probed a forced mode"))
    config = compose(["train.max_steps=16", "train.jit_compile=step"])
    result = train.train(model.build_model(config.model, "float32", seed=0), tiny_datasets(), config.train, "float32")
    assert (result.jit.mode, result.jit.source) == ("step", "forced")
    assert not any(name.startswith("train/jit_probe") for name in result.metrics())


def test_auto_learns_bit_for_bit_what_the_chosen_mode_learns(compose):
    """The probe trains on the real weights, then puts them and the optimizer state back."""
    results = {}
    for jit_compile in ("auto", "chosen"):
        mode = results["auto"].jit.mode if jit_compile == "chosen" else "auto"
        config = compose(["train.epochs=2", "train.deterministic=true", f"train.jit_compile={mode}",
                          "train.jit_cache_file=null"])
        results[jit_compile] = train.train(model.build_model(config.model, "mixed_float16", seed=7), tiny_datasets(),
                                           config.train, "mixed_float16")
    assert results["auto"].jit.source == "probe"
    assert results["auto"].final_loss == results["chosen"].final_loss
    for auto_weight, chosen_weight in zip(results["auto"].model.weights, results["chosen"].model.weights):
        np.testing.assert_array_equal(auto_weight.numpy(), chosen_weight.numpy())
    assert results["auto"].loss_scale == results["chosen"].loss_scale


def test_under_a_strategy_or_for_convolutions_on_a_cpu_whole_call_xla_is_not_tried(compose):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    config = compose(["train.max_steps=16", "train.jit_cache_file=null", "train.jit_compile=auto"])
    built = model.build_model(config.model, "float32", seed=0, strategy=strategy)
    with strategy.scope():
        optimizer = steps.make_optimizer("float32", 1e-3)
    result = train.train(built, tiny_datasets(), config.train, "float32", optimizer=optimizer, strategy=strategy)
    assert set(result.jit.step_ms) == {"false", "step"}
    convnet = model.build_model(compose(["model=cnn"]).model, "float32", seed=0)
    assert JitCompile.true not in compile_mode.candidate_modes(convnet, strategy=None)
    assert JitCompile.true in compile_mode.candidate_modes(model.build_model(config.model, "float32", seed=0), None)


def test_every_compiling_call_is_warm_up(compose):
    """20 steps, 8 a call: calls of 8, 8 and 4 steps, two programs, two warm-up calls."""
    config = compose(["train.epochs=3", "train.max_steps=20", "train.steps_per_call=8", "train.jit_compile=false"])
    forced = train.train(model.build_model(config.model, "float32", seed=0), tiny_datasets(), config.train, "float32")
    assert forced.warmup_calls == 2
    # Under auto the probe compiled the 8-step program the training reuses: only the 4-step call compiles.
    config = compose(["train.epochs=3", "train.max_steps=20", "train.steps_per_call=8", "train.jit_compile=auto"])
    auto = train.train(model.build_model(config.model, "float32", seed=0), tiny_datasets(), config.train, "float32")
    assert auto.jit.compiled_steps == 8 and auto.warmup_calls == 1


def test_calls_run_across_epoch_ends_in_the_epochs_own_order():
    order = batch_order.BatchOrder(example_count=40, batch_size=4, batch_shape=(4,), seed=3)  # 10 steps an epoch
    indices = order.indices(8, 4).numpy()  # steps 9-10 of epoch 0, steps 1-2 of epoch 1
    expected = np.concatenate([batch_order.epoch_order(40, 3, 0).numpy()[32:40],
                               batch_order.epoch_order(40, 3, 1).numpy()[:8]])
    np.testing.assert_array_equal(indices.reshape(-1), expected)
    assert indices.shape == (4, 4)


def test_a_memory_budget_keeps_auto_to_the_modes_that_fit_and_says_so(compose, caplog):
    """The CNN at batch 256: XLA per step holds about twice graph mode's tensors on a CPU. Graph mode is made
    slower here so XLA would win on speed; a budget between the two peaks must still pick graph mode."""
    from pipeline.core import data
    from pipeline.training import memory

    config = compose(["model=cnn"])
    built = model.build_model(config.model, "float32", seed=0)
    optimizer = steps.make_optimizer("float32", 1e-3)
    optimizer.build(built.trainable_variables)
    rng = np.random.default_rng(0)
    split = data.Split(rng.integers(0, 256, (512, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 512))
    split_on_device = steps.device_split(split)
    order = batch_order.BatchOrder(512, 256, (256,), seed=0)
    calls = {}

    def build_call(mode):
        if mode not in calls:
            call = functools.partial(steps.make_call(built, optimizer, mode), *split_on_device)
            calls[mode] = (lambda indices: (time.sleep(0.5), call(indices))[1]) if mode == JitCompile.false else call
        return calls[mode]

    def choose(budget):
        return compile_mode.choose(JitCompile.auto, [JitCompile.false, JitCompile.step], build_call,
                                   lambda count: order.indices(0, count), 1, [*built.variables, *optimizer.variables],
                                   cache_file=None, key={}, memory_budget_mb=budget)

    unbounded = choose(None)
    assert unbounded.mode == JitCompile.step  # the fastest, with graph mode slowed
    assert unbounded.peak_mb["step"] > 1.3 * unbounded.peak_mb["false"], unbounded.peak_mb
    budget = (unbounded.peak_mb["step"] + unbounded.peak_mb["false"]) / 2
    with caplog.at_level(logging.INFO, logger="pipeline"):
        bounded = choose(budget)
    assert bounded.mode == JitCompile.false and bounded.peak_mb["false"] <= budget
    assert f"budget {budget:g}: step over it" in caplog.text
    assert bounded.metrics()["train/jit_probe/step_peak_mb"] > budget
    with pytest.raises(memory.MemoryBudgetError, match=r"no compile mode fits train.memory_budget_mb=1: the smallest "
                                                       r"step peak was [0-9.]+ MiB \(mode false\); raise the budget"):
        choose(1)


def test_a_cached_decision_is_held_to_the_budget_too(compose, tmp_path):
    cache = compile_mode.DecisionCache(str(tmp_path / "jit.json"))
    key = {"model": "m"}
    cache.put(key, {"mode": "true", "step_ms": {"false": 2.0, "true": 1.0}, "peak_mb": {"false": 100.0, "true": 300.0}})
    choose = functools.partial(compile_mode.choose, JitCompile.auto, [JitCompile.false, JitCompile.true], None, None, 1,
                               [], str(tmp_path / "jit.json"), key)
    assert choose().mode == JitCompile.true
    cached = choose(memory_budget_mb=200)
    assert cached.mode == JitCompile.false and cached.source == "cache"
