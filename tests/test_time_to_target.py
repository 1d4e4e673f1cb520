"""Time to a target accuracy: the stop rule, evaluation cadence, the clock's figures, and MLPerf's scoring."""

import math
import re

import numpy as np
import pytest
from helpers import tiny_datasets

from pipeline.analysis import comparison, summary, time_to_target
from pipeline.core import config as config_lib
from pipeline.core import data, model
from pipeline.stages import train
from pipeline.training import target


def _train(compose, overrides, datasets=None, log=None):
    config = compose(["train.epochs=3", "train.steps_per_call=4", *overrides])
    built = model.build_model(config.model, "float32", seed=0)
    return train.train(built, datasets or tiny_datasets(), config.train, "float32",
                       log_metric=(lambda name, points: log.append((name, points))) if log is not None else None)


def test_training_stops_at_the_first_evaluation_that_reaches_the_target(compose):
    logged = []
    # Random labels: chance is about 0.1, so a target of 0.01 is reached at the first evaluation: due at
    # step 6, run at the end of the call that reaches it (calls of 4 steps).
    result = _train(compose, ["train.target_accuracy=0.01", "train.eval_every_steps=6"], log=logged)
    summary_ = result.target_summary
    assert result.steps == 8 and summary_.steps_to_target == 8 and len(summary_.evaluations) == 1
    assert summary_.examples_to_target == 8 * 32
    assert 0 < summary_.time_to_target_without_compile_s <= summary_.time_to_target_s
    assert result.tags()["train.target_reached"] == "true"
    metrics = result.metrics()
    assert metrics["train/time_to_target_s"] == summary_.time_to_target_s and metrics["train/steps_to_target"] == 8
    # Each evaluation logged when it happens, at its step, with the clock's seconds beside it.
    evaluations = [(name, points) for name, points in logged if name != "train/loss"]
    assert [name for name, _ in evaluations] == ["eval/accuracy", "train/elapsed_s"]
    assert evaluations[0][1][0][0] == 8 and evaluations[1][1] == [(8, summary_.evaluations[0].elapsed_s)]


def test_without_stop_at_target_it_trains_the_budget_and_still_times_the_target(compose):
    result = _train(compose, ["train.target_accuracy=0.01", "train.eval_every_steps=4", "train.stop_at_target=false",
                              "train.max_steps=18"])
    assert result.steps == 18  # calls of 4, 4, 4, 4, 2; an evaluation after each, the last one included
    assert [evaluation.step for evaluation in result.target_summary.evaluations] == [4, 8, 12, 16, 18]
    assert result.target_summary.steps_to_target == 4


def test_an_unreachable_target_trains_the_budget_and_is_not_converged(compose):
    result = _train(compose, ["train.target_accuracy=1.0"])  # random labels: never all right
    summary_ = result.target_summary
    assert result.steps == 24  # 3 epochs of 8 steps, evaluated once each
    assert [evaluation.step for evaluation in summary_.evaluations] == [8, 16, 24]
    assert not summary_.reached and summary_.time_to_target_s is None
    assert "train/time_to_target_s" not in result.metrics() and result.tags()["train.target_reached"] == "false"


def test_no_target_and_no_cadence_means_no_evaluation_during_training(compose):
    result = _train(compose, [])
    assert result.target_summary.evaluations == [] and "train.target_reached" not in result.tags()
    assert "train/evaluations" not in result.metrics()


@pytest.mark.parametrize("jit_compile, model_overrides", [
    ("false", []), ("true", []),
    # Dropout draws from the model's seed generator in training mode: evaluations must not draw.
    ("false", ["model=vit", "model.width=16", "model.depth=1", "model.heads=2", "model.dropout=0.1"]),
])
def test_evaluation_cadence_does_not_change_the_trained_weights(compose, jit_compile, model_overrides):
    """Evaluations run the model in inference mode between training calls, which they never split (XLA's
    program of a one-step call rounds differently from its loop): a run that does not stop ends with the
    same weights, bit for bit, whatever the cadence."""
    weights = []
    for cadence in ([], ["train.eval_every_steps=5"], ["train.eval_every_steps=1", "train.target_accuracy=1.0"]):
        result = _train(compose, [f"train.jit_compile={jit_compile}", "train.max_steps=20", *model_overrides, *cadence])
        assert result.steps == 20
        weights.append([variable.numpy() for variable in result.model.weights])
    for other in weights[1:]:
        for first, second in zip(weights[0], other):
            np.testing.assert_array_equal(first, second)


def test_evaluations_read_a_held_out_validation_split_when_one_is_set(compose):
    config = compose(["data.validation_size=64", "train.epochs=2", "train.target_accuracy=1.0"])
    split = tiny_datasets().train
    train_part, validation = data.hold_out(split, 64)
    assert len(train_part.labels) == 192 and len(validation.labels) == 64
    assert data.hold_out(split, 64)[1].digest == validation.digest  # the same draw every time
    datasets = data.Datasets(train=train_part, test=split, batch_size=32, num_classes=10, validation=validation)
    result = train.train(model.build_model(config.model, "float32", seed=0), datasets, config.train, "float32")
    assert result.target_summary.split == "validation" and result.target_summary.metric == "validation/accuracy"
    assert result.steps == 12  # 6 steps an epoch on what is left


@pytest.mark.parametrize("overrides, message", [
    (["train.target_accuracy=1.5"], "train.target_accuracy=1.5 must be in (0, 1]"),
    (["train.eval_every_steps=0"], "train.eval_every_steps=0 must be positive"),
    (["data.validation_size=60000"], "data.validation_size=60000 must be between 1 and 59999"),
])
def test_bad_target_settings_are_one_line_naming_the_key(compose, overrides, message):
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
        config_lib.validate(compose(overrides))


def test_time_without_compilation_takes_out_what_compiling_calls_spent_over_their_steps():
    evaluations = target.Evaluations(0.5, every_steps=10, stop_at_target=True, steps_per_epoch=100, split="test")
    calls = [target.TimedCall(10, 3.0, ended_s=3.0, compiled=True),
             target.TimedCall(10, 1.0, ended_s=4.0, compiled=False)]
    evaluations.record(target.Evaluation(10, 0.3, elapsed_s=3.5, seconds=0.5, compiled=True))
    assert evaluations.record(target.Evaluation(20, 0.6, elapsed_s=4.2, seconds=0.2, compiled=False))
    summary_ = evaluations.summary(calls, batch_size=8)
    # The first call: 3 s for 10 steps of 0.1 s (2 s of compiling); the first evaluation 0.3 s over 0.2 s.
    assert summary_.time_to_target_s == 4.2
    assert summary_.time_to_target_without_compile_s == pytest.approx(4.2 - 2.0 - 0.3)
    assert summary_.examples_to_target == 160 and summary_.evaluation_share == pytest.approx(0.7 / 4.2)


@pytest.mark.parametrize("times, score, note", [
    ([5.0, 1.0, 3.0, 4.0, 2.0], 3.0, None),  # drops 1 and 5
    ([5.0, 1.0, None, 4.0, 2.0], (2.0 + 4.0 + 5.0) / 3, "the run that missed counts as the slowest"),
    ([5.0, None, None, 4.0, 2.0], None, "invalid: 2 of 5 runs missed the target (MLPerf allows one)"),
    ([2.0, 3.0], None, "needs 3 runs or more to drop the fastest and the slowest (2 ran)"),
])
def test_mlperf_score_drops_the_fastest_and_the_slowest(times, score, note):
    result = time_to_target.mlperf_score(times)
    assert (result.seconds == pytest.approx(score) if score else result.seconds is None) and result.note == note
    assert result.reached == sum(time is not None for time in times) and result.runs == len(times)


def ttt_job(policy, seed, seconds):
    return {"run": f"cnn-{policy}-bs128", "model": "cnn", "policy": policy, "batch_size": 128, "learning_rate": 0.001,
            "seed": str(seed), "jit_compile": "false", "status": "FINISHED", "eval_accuracy": 0.9,
            "train_examples_per_sec": 1000.0, "class_accuracy": [0.9] * 10, "train_digest": "abc",
            "target_accuracy": 0.88, "target_reached": seconds is not None, "time_to_target_s": seconds}


def test_report_scores_each_cell_and_pairs_each_policy_with_float32_by_seed():
    float32 = [10.0, 12.0, 11.0, 13.0, 9.0]
    jobs = [ttt_job("float32", seed, seconds) for seed, seconds in enumerate(float32)]
    jobs += [ttt_job("mixed_bfloat16", seed, seconds * 0.7) for seed, seconds in enumerate(float32)]
    jobs += [ttt_job("mixed_float16", seed, seconds) for seed, seconds in enumerate([20.0, None, 22.0, 21.0, 23.0])]
    rows = {row["policy"]: row for row in comparison.compare_to_float32(jobs)}
    assert rows["float32"]["target_score_s"] == pytest.approx(11.0) and rows["float32"]["target_reached_runs"] == "5/5"
    bfloat16 = rows["mixed_bfloat16"]
    assert bfloat16["time_to_target_vs_float32"] == pytest.approx(0.7)
    assert bfloat16["time_to_target_low"] == pytest.approx(0.7) == bfloat16["time_to_target_high"]  # no spread
    float16 = rows["mixed_float16"]
    assert float16["target_reached_runs"] == "4/5" and float16["target_score_s"] == pytest.approx((21 + 22 + 23) / 3)
    assert float16["time_to_target_pairs"] == 4  # the seed that missed has no ratio
    said = time_to_target.sentences(list(rows.values()))
    assert said[0].startswith("mixed_bfloat16 reaches 0.88 in 0.70x float32's time (95% CI 0.70..0.70x): sooner; "
                              "5/5 seeds reached (float32 5/5)")
    assert said[1].startswith("mixed_float16 reaches 0.88 in 2.02x") and ": later; 4/5 seeds reached" in said[1]
    table = time_to_target.to_markdown(list(rows.values()))
    assert "| cnn | mixed_float16 | 128 | 0.88 | 4/5 | 22.0 |" in table and "counts as the slowest" in table
    terminal = summary.compact_table(list(rows.values()))
    assert "reached" in terminal.splitlines()[0] and "MLPerf score s" in terminal.splitlines()[0]


def test_two_missed_runs_leave_the_cell_without_a_score():
    jobs = [ttt_job("float32", seed, seconds) for seed, seconds in enumerate([10.0, None, None])]
    (row,) = comparison.compare_to_float32(jobs)
    assert row["target_score_s"] is None and row["target_note"].startswith("invalid: 2 of 3 runs missed")
    assert "| - | 10.0 |" in time_to_target.to_markdown([row])  # no score; the mean of the one that reached
    assert not math.isnan(row["time_to_target_s"])
