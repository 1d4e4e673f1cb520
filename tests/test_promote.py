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
