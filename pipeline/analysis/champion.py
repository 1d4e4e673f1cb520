"""The promotion rule: which of a sweep's registered versions becomes the champion, and why.

Among the versions whose eval accuracy is within rule.accuracy_tolerance of the best float32 job
and whose export parity (infer/agreement) is at least rule.min_agreement, take the best
rule.metric (default: inference throughput).
"""

import dataclasses

from pipeline import PipelineError


@dataclasses.dataclass
class Candidate:
    """A registered version with the figures the promotion rule reads."""

    version: str
    run_name: str
    policy: str
    accuracy: float | None
    agreement: float | None
    score: float | None


class NoChampionError(PipelineError):
    """No version of the sweep satisfies the rule."""


def choose_champion(candidates: list[Candidate], rule) -> tuple[Candidate, str]:
    """Applies the rule (conf/promote.yaml's `rule`); returns the chosen candidate and a sentence saying why.

    Raises:
        NoChampionError: no float32 baseline, or no version passes both thresholds.
    """
    baselines = [candidate.accuracy for candidate in candidates
                 if candidate.policy == "float32" and candidate.accuracy is not None]
    if not baselines:
        raise NoChampionError("the sweep registered no float32 version to compare accuracy against; "
                              "include precision=float32 in the sweep")
    floor = max(baselines) - rule.accuracy_tolerance
    qualified = [candidate for candidate in candidates
                 if candidate.accuracy is not None and candidate.accuracy >= floor
                 and candidate.agreement is not None and candidate.agreement >= rule.min_agreement
                 and candidate.score is not None]
    if not qualified:
        raise NoChampionError(
            f"no version has eval accuracy >= {floor:.4f} (best float32 {max(baselines):.4f} - "
            f"{rule.accuracy_tolerance}) and infer/agreement >= {rule.min_agreement}; relax rule.* to promote"
        )
    best = (max if rule.higher_is_better else min)(qualified, key=lambda candidate: candidate.score)
    direction = "highest" if rule.higher_is_better else "lowest"
    reason = (f"{direction} {rule.metric} ({best.score:.4g}) among {len(qualified)} of {len(candidates)} versions "
              f"with eval accuracy >= {floor:.4f} and infer/agreement >= {rule.min_agreement}")
    return best, reason
