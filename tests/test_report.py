"""The sweep report's comparisons, on plain rows (no store needed)."""

import pytest

from pipeline.analysis import report


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
    by_run = {row["run"]: row for row in report.compare_to_float32(rows)}
    assert by_run["a"]["speedup_vs_float32"] == 1.0 and by_run["a"]["delta_accuracy_vs_float32"] == 0.0
    assert by_run["b"]["speedup_vs_float32"] == 1.5
    assert by_run["b"]["delta_accuracy_vs_float32"] == pytest.approx(-0.01)
    assert by_run["c"]["speedup_vs_float32"] is None  # no float32 job at batch 128
    assert by_run["e"]["speedup_vs_float32"] is None  # no float32 job at that learning rate (a search's trial)
    assert by_run["d"]["speedup_vs_float32"] is None
