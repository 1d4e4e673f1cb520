"""The promotion rule, on plain figures (no store needed)."""

import pytest

from pipeline.analysis import champion
from pipeline.analysis.champion import Candidate

CANDIDATES = [
    Candidate("1", "mlp-float32-bs64", "float32", accuracy=0.850, agreement=1.0, score=100.0),
    Candidate("2", "mlp-mixed_bfloat16-bs64", "mixed_bfloat16", accuracy=0.845, agreement=1.0, score=300.0),
    Candidate("3", "mlp-mixed_float16-bs64", "mixed_float16", accuracy=0.849, agreement=0.99, score=900.0),
    Candidate("4", "mlp-mixed_bfloat16-bs128", "mixed_bfloat16", accuracy=0.80, agreement=1.0, score=1000.0),
]


@pytest.fixture
def promote_rule(compose):
    return compose([], config_name="promote").rule


def test_rule_takes_fastest_version_within_tolerance_and_parity(promote_rule):
    chosen, reason = champion.choose_champion(CANDIDATES, promote_rule)
    # 3 fails parity, 4 trails the best float32 accuracy by more than the tolerance.
    assert chosen.version == "2"
    assert "infer/examples_per_sec" in reason and "2 of 4 versions" in reason


def test_rule_can_minimize(promote_rule):
    promote_rule.higher_is_better = False
    assert champion.choose_champion(CANDIDATES, promote_rule)[0].version == "1"


def test_rule_refuses_without_float32_or_qualifier(promote_rule):
    with pytest.raises(champion.NoChampionError, match="no float32 version"):
        champion.choose_champion(CANDIDATES[1:], promote_rule)
    promote_rule.min_agreement = 1.01
    with pytest.raises(champion.NoChampionError, match="no version has eval accuracy >= 0.8400"):
        champion.choose_champion(CANDIDATES, promote_rule)


def seeded(version, policy, seed, accuracy, score, batch_size=64, agreement=1.0):
    return Candidate(version, f"mlp-{policy}-bs{batch_size}", policy, accuracy=accuracy, agreement=agreement,
                     score=score, model="mlp", batch_size=batch_size, learning_rate=0.001, seed=str(seed))


def test_interval_rule_qualifies_configurations_by_their_paired_interval_and_picks_by_mean(promote_rule):
    promote_rule.accuracy_test = "interval"
    candidates = [
        *(seeded(str(seed + 1), "float32", seed, 0.80 + 0.01 * seed, 100.0) for seed in range(3)),
        # -0.01, 0.00, -0.01: interval -0.021..+0.008 reaches above -0.01: qualifies; mean score 300.
        seeded("4", "mixed_bfloat16", 0, 0.79, 290.0), seeded("5", "mixed_bfloat16", 1, 0.81, 320.0),
        seeded("6", "mixed_bfloat16", 2, 0.81, 290.0),
        # -0.10 on every seed: the interval's upper end is far below -0.01, however fast.
        *(seeded(str(seed + 7), "mixed_float16", seed, 0.70 + 0.01 * seed, 900.0) for seed in range(3)),
    ]
    chosen, reason = champion.choose_champion(candidates, promote_rule)
    assert chosen.version == "5"  # the bfloat16 configuration; its most accurate seed
    assert "mean infer/examples_per_sec (300 over 3 seeds)" in reason and "2 of 3 configurations" in reason


def test_interval_rule_needs_repeats(promote_rule):
    promote_rule.accuracy_test = "interval"
    candidates = [seeded("1", "float32", 0, 0.80, 100.0), seeded("2", "mixed_bfloat16", 0, 0.80, 300.0)]
    chosen, _ = champion.choose_champion(candidates, promote_rule)
    assert chosen.version == "1"  # one seed gives no interval: only float32 (its own baseline) qualifies
