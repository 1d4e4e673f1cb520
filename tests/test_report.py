"""The sweep report's comparisons, on plain rows (no store needed)."""

import matplotlib
import pytest

from pipeline.analysis import comparison, memory, plots, summary


def test_report_compares_each_job_to_float32_at_its_batch_size_and_rate():
    rows = [
        {"run": "a", "model": "mlp", "policy": "float32", "batch_size": 64, "learning_rate": 0.001,
         "status": "FINISHED", "eval_accuracy": 0.80, "train_examples_per_sec": 1000.0},
        {"run": "b", "model": "mlp", "policy": "mixed_bfloat16", "batch_size": 64, "learning_rate": 0.001,
         "status": "FINISHED", "eval_accuracy": 0.79, "train_examples_per_sec": 1500.0},
        {"run": "c", "model": "mlp", "policy": "mixed_bfloat16", "batch_size": 128, "learning_rate": 0.001,
         "status": "FINISHED", "eval_accuracy": 0.81, "train_examples_per_sec": 3000.0},
        {"run": "d", "model": "mlp", "policy": "mixed_float16", "batch_size": 64, "learning_rate": 0.001,
         "status": "FAILED", "eval_accuracy": None, "train_examples_per_sec": None},
        {"run": "e", "model": "mlp", "policy": "mixed_bfloat16", "batch_size": 64, "learning_rate": 0.01,
         "status": "FINISHED", "eval_accuracy": 0.78, "train_examples_per_sec": 1400.0},
    ]
    by_run = {row["run"]: row for row in comparison.compare_to_float32(rows)}
    assert by_run["a"]["speedup_vs_float32"] == 1.0 and by_run["a"]["delta_accuracy_vs_float32"] == 0.0
    assert by_run["b"]["speedup_vs_float32"] == 1.5
    assert by_run["b"]["delta_accuracy_vs_float32"] == pytest.approx(-0.01)
    assert by_run["c"]["speedup_vs_float32"] is None  # no float32 job at batch 128
    assert by_run["e"]["speedup_vs_float32"] is None  # no float32 job at that learning rate (a search's trial)
    assert by_run["d"]["speedup_vs_float32"] is None


def job(policy, seed, accuracy, examples_per_sec, batch_size=64, status="FINISHED", class_accuracy=None,
        transient=None):
    transient = transient or batch_size * (1.0 if policy == "float32" else 0.5 + 0.01 * int(seed))
    return {"run": f"mlp-{policy}-bs{batch_size}", "model": "mlp", "policy": policy, "batch_size": batch_size,
            "learning_rate": 0.001, "seed": str(seed), "jit_compile": "step", "status": status,
            "eval_accuracy": accuracy, "train_examples_per_sec": examples_per_sec, "step_time_ms": 1.0,
            "peak_tensor_mb": 50.0 + transient, "step_transient_mb": transient, "infer_latency_ms_p50": 0.2,
            "class_accuracy": class_accuracy or [accuracy] * 10, "train_digest": "abc"}


# Three seeds at batch 64 (float32 listed out of seed order: pairs must follow the seed, not the order),
# one at batch 128, and at batch 256 a float32 job missing for seed 2.
JOBS = [
    job("float32", 2, 0.81, 900.0), job("float32", 0, 0.80, 1000.0), job("float32", 1, 0.82, 1100.0),
    job("mixed_bfloat16", 0, 0.79, 1500.0), job("mixed_bfloat16", 1, 0.82, 1760.0),
    job("mixed_bfloat16", 2, 0.80, 1260.0),
    job("mixed_float16", 0, 0.70, 1000.0), job("mixed_float16", 1, 0.71, 1100.0), job("mixed_float16", 2, 0.72, 900.0),
    job("float32", 0, 0.85, 2000.0, batch_size=128), job("mixed_bfloat16", 0, 0.86, 3000.0, batch_size=128),
    job("float32", 0, 0.84, 2000.0, batch_size=256), job("float32", 1, 0.84, 2000.0, batch_size=256),
    job("mixed_bfloat16", 0, 0.83, 2000.0, batch_size=256), job("mixed_bfloat16", 1, 0.85, 2000.0, batch_size=256),
    job("mixed_bfloat16", 2, 0.99, 2000.0, batch_size=256),
]


def rows_by_configuration():
    return {(row["policy"], row["batch_size"]): row for row in comparison.compare_to_float32(JOBS)}


def test_repeats_are_one_row_with_mean_and_spread():
    row = rows_by_configuration()[("float32", 64)]
    assert row["n"] == 3 and row["run"] == "mlp-float32-bs64 x3"
    assert row["eval_accuracy"] == pytest.approx(0.81) and row["eval_accuracy_std"] == pytest.approx(0.01)
    assert row["train_examples_per_sec"] == pytest.approx(1000.0)
    assert row["train_examples_per_sec_std"] == pytest.approx(100.0)


def test_paired_differences_by_seed_with_student_t_intervals():
    bfloat16 = rows_by_configuration()[("mixed_bfloat16", 64)]
    # Paired by seed: -0.01, 0.00, -0.01; mean -0.00667, sd 0.00577, t(0.975, 2) = 4.303, half width 0.01434.
    assert bfloat16["delta_accuracy_vs_float32"] == pytest.approx(-0.006667, abs=1e-6)
    assert bfloat16["delta_accuracy_low"] == pytest.approx(-0.021009, abs=1e-6)
    assert bfloat16["delta_accuracy_high"] == pytest.approx(0.007676, abs=1e-6)
    assert bfloat16["accuracy_verdict"] == "no accuracy cost detected"
    # Ratios 1.5, 1.6, 1.4: geometric mean 1.4978, interval exp(mean log +- 4.303 sem) = 1.2688..1.7680.
    assert bfloat16["speedup_vs_float32"] == pytest.approx(1.497774, abs=1e-6)
    assert (bfloat16["speedup_low"], bfloat16["speedup_high"]) == pytest.approx((1.268829, 1.768031), abs=1e-6)
    float16 = rows_by_configuration()[("mixed_float16", 64)]
    # -0.10, -0.11, -0.09: mean -0.1, interval -0.1248..-0.0752, all below zero.
    assert (float16["delta_accuracy_low"], float16["delta_accuracy_high"]) == pytest.approx((-0.124841, -0.075159),
                                                                                            abs=1e-6)
    assert float16["accuracy_verdict"] == "costs accuracy"


def test_one_seed_or_a_missing_partner():
    single = rows_by_configuration()[("mixed_bfloat16", 128)]
    assert single["n"] == 1 and single["delta_accuracy_vs_float32"] == pytest.approx(0.01)
    assert single["delta_accuracy_low"] is None and single["accuracy_verdict"] == "not enough repeats"
    assert single["speedup_vs_float32"] == 1.5 and single["speedup_low"] is None
    # Seed 2 has no float32 partner: only seeds 0 and 1 pair (-0.01, +0.01; t(0.975, 1) = 12.706).
    partial = rows_by_configuration()[("mixed_bfloat16", 256)]
    assert partial["n"] == 3 and partial["delta_accuracy_vs_float32"] == pytest.approx(0.0, abs=1e-9)
    assert (partial["delta_accuracy_low"], partial["delta_accuracy_high"]) == pytest.approx((-0.127062, 0.127062),
                                                                                            abs=1e-6)


def test_the_class_that_changes_most_is_named():
    classes = [0.8] * 10
    jobs = [job("float32", seed, 0.8, 1000.0, class_accuracy=classes) for seed in (0, 1)]
    jobs += [job("mixed_bfloat16", seed, 0.8, 1000.0, class_accuracy=classes[:3] + [0.7 + 0.02 * seed] + classes[4:])
             for seed in (0, 1)]
    (row,) = [row for row in comparison.compare_to_float32(jobs) if row["policy"] == "mixed_bfloat16"]
    assert row["most_changed_class"] == 3 and row["most_changed_class_delta"] == pytest.approx(-0.09)
    assert summary.cell(row, "most_changed_class") == "3: -0.0900 (-0.2171..+0.0371)"


def test_summary_sentences_say_it_in_words():
    sentences = summary.summary_sentences(comparison.compare_to_float32(JOBS))
    assert ("mixed_bfloat16 vs float32, mlp, batch 64, 3 seeds: accuracy -0.0067 (95% CI -0.0210..+0.0077): "
            "no cost detected; 1.50x faster (95% CI 1.27..1.77x)") in sentences
    assert ("mixed_float16 vs float32, mlp, batch 64, 3 seeds: accuracy -0.1000 (95% CI -0.1248..-0.0752): "
            "costs accuracy; 1.00x float32's speed (95% CI 1.00..1.00x): no speed difference detected") in sentences
    assert ("mixed_bfloat16 vs float32, mlp, batch 128, 1 seed: accuracy +0.0100: not enough repeats; 1.50x faster"
            in sentences)


@pytest.mark.parametrize("speedup,low,high,words", [
    (0.88, 0.71, 1.10, "0.88x float32's speed (95% CI 0.71..1.10x): no speed difference detected"),
    (0.80, 0.625, 0.90, "1.25x slower (95% CI 1.11..1.60x slower)"),
    (1.50, 1.27, 1.77, "1.50x faster (95% CI 1.27..1.77x)"),
    (0.50, None, None, "2.00x slower"),
])
def test_speed_words_and_their_interval_point_the_same_way(speedup, low, high, words):
    # A 0.88x mean whose interval spans 0.71..1.10x once read "1.13x slower (0.71..1.10x)".
    assert summary._speed_in_words(speedup, low, high) == words


def test_memory_is_tensor_memory_against_float32_in_words_with_its_interval():
    rows = comparison.compare_to_float32(JOBS)
    by_configuration = {(row["policy"], row["batch_size"]): row for row in rows}
    bfloat16 = by_configuration[("mixed_bfloat16", 64)]
    # Paired by seed: 32.0/64, 32.64/64, 33.28/64 -> mean 0.51x, with a Student-t interval around it.
    assert bfloat16["step_memory_vs_float32"] == pytest.approx(0.51, abs=1e-3)
    assert bfloat16["step_memory_low"] < 0.51 < bfloat16["step_memory_high"]
    assert by_configuration[("float32", 64)]["peak_tensor_mb"] == pytest.approx(114.0)
    sentences = memory.sentences(rows)
    assert any(sentence.startswith("mixed_bfloat16 uses 0.51x float32's step memory at batch 64 (step) (95% CI 0.")
               and sentence.endswith("mlp: tensor peak 82.6 MiB against 114") for sentence in sentences), sentences
    assert "| peak_tensor_mb | step_memory_vs_float32 | max_batch |" in summary.to_markdown(rows)


def test_the_largest_batch_per_policy_in_words_and_in_the_terminal_table():
    searches = [dict(job(policy, 0, None, None, batch_size=128), max_batch=batch, max_batch_examples_per_sec=rate,
                     peak_tensor_mb=None, step_transient_mb=None)
                for policy, batch, rate in (("float32", 1536, 8000.0), ("mixed_bfloat16", 2688, 15600.0))]
    rows = comparison.compare_to_float32(searches)
    assert memory.sentences(rows) == ["mixed_bfloat16 fits batch 2,688 (step), 1.75x float32's 1,536, mlp; at those "
                                      "batches 1.95x the examples per second"]
    table = summary.compact_table(rows)
    assert "fits batch" in table.splitlines()[0] and "accuracy" not in table.splitlines()[0]
    assert "2,688" in table


def test_report_plots_tensor_peak_against_batch_size_and_the_estimate_beside_the_measurement(tmp_path):
    parts = {"parameters": 0.4, "optimizer_slots": 0.8, "weight_copies": 0.2, "gradients": 0.6, "activations": 30.0}
    jobs = [dict(job(policy, 0, 0.8, 1000.0, batch_size=batch), memory_estimate=parts)
            for policy in ("float32", "mixed_bfloat16") for batch in (64, 128)]
    matplotlib.use("Agg")
    from matplotlib import pyplot

    files = memory.plot(pyplot, comparison.compare_to_float32(jobs), tmp_path, plots._save)
    assert [path.name for path in files] == ["tensor_peak_vs_batch_size.png", "memory_estimate.png"]
    assert all(path.stat().st_size > 5000 for path in files)
    assert memory.estimate_of({f"memory/estimate/{part}_mb": value for part, value in parts.items()}) == parts
    assert memory.estimate_of({"memory/estimate/parameters_mb": 1.0}) is None


def test_a_model_size_sweep_reads_as_a_table_of_sizes():
    jobs = [dict(job(policy, 0, 0.85, speed), model=f"vit-w{width}-d4", parameters=parameters)
            for width, parameters in ((32, 36682), (64, 138890)) for policy, speed in (("float32", 1000.0),
                                                                                       ("mixed_bfloat16", 800.0))]
    table = summary.compact_table(comparison.compare_to_float32(jobs))
    assert table.splitlines()[0].split()[:3] == ["model", "params", "policy"]
    assert any(line.startswith("vit-w64-d4") and "138,890" in line and "0.80x" in line for line in table.splitlines())
