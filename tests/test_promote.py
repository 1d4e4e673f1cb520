"""The promotion rule and the report's ratios, on plain figures (no store needed)."""

import pytest
from conftest import compose

from pipeline import promote, report
from pipeline.registry import Candidate


@pytest.fixture
def promote_rule():
    return compose([], config_name="promote").rule


CANDIDATES = [
    Candidate("1", "mlp-float32-bs64", "float32", accuracy=0.850, agreement=1.0, score=100.0),
    Candidate("2", "mlp-mixed_bfloat16-bs64", "mixed_bfloat16", accuracy=0.845, agreement=1.0, score=300.0),
    Candidate("3", "mlp-mixed_float16-bs64", "mixed_float16", accuracy=0.849, agreement=0.99, score=900.0),
    Candidate("4", "mlp-mixed_bfloat16-bs128", "mixed_bfloat16", accuracy=0.80, agreement=1.0, score=1000.0),
]


def test_rule_takes_fastest_version_within_tolerance_and_parity(promote_rule):
    champion, reason = promote.choose_champion(CANDIDATES, promote_rule)
    # 3 fails parity, 4 trails the best float32 accuracy by more than the tolerance.
    assert champion.version == "2"
    assert "infer/examples_per_sec" in reason and "2 of 4 versions" in reason


def test_rule_can_minimize(promote_rule):
    promote_rule.higher_is_better = False
    assert promote.choose_champion(CANDIDATES, promote_rule)[0].version == "1"


def test_rule_refuses_without_float32_or_qualifier(promote_rule):
    with pytest.raises(promote.NoChampionError, match="no float32 version"):
        promote.choose_champion(CANDIDATES[1:], promote_rule)
    promote_rule.min_agreement = 1.01
    with pytest.raises(promote.NoChampionError, match="no version has eval accuracy >= 0.8400"):
        promote.choose_champion(CANDIDATES, promote_rule)


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
