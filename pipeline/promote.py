"""`python -m pipeline.promote`: sets the `champion` alias on the model version a readable rule picks.

The default rule: among a sweep's registered versions whose eval accuracy is within
rule.accuracy_tolerance of the best float32 job and whose export parity (infer/agreement) is at
least rule.min_agreement, take the best rule.metric (default: inference throughput).
"""

import logging

import hydra
from omegaconf import DictConfig

import pipeline.config  # noqa: F401  registers the schemas conf/ names
from pipeline import PipelineError

logger = logging.getLogger("pipeline.promote")


class NoChampionError(PipelineError):
    """No version of the sweep satisfies the rule."""


def choose_champion(candidates, rule) -> tuple[object, str]:
    """Applies the rule; returns the chosen candidate and a sentence saying why.

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


@hydra.main(version_base="1.3", config_path="../conf", config_name="promote")
def main(config: DictConfig) -> None:
    from pipeline import registry, sweeps

    name = config.tracking.registered_model
    parent_run = sweeps.find_sweep(config.tracking, config.sweep_id)
    if parent_run is None or not name:
        raise SystemExit(f"nothing to promote: no sweep in {config.tracking.uri} or tracking.registered_model unset")
    sweep_id = parent_run.data.tags[sweeps.SWEEP_ID_TAG]
    candidates = registry.sweep_candidates(config.tracking, name, sweep_id, config.rule.metric)
    try:
        champion, reason = choose_champion(candidates, config.rule)
    except NoChampionError as error:
        raise SystemExit(f"no champion for sweep {sweep_id}: {error}") from None
    if registry.current_alias(config.tracking, name, config.aliases.champion) == champion.version:
        print(f"{name} version {champion.version} ({champion.run_name}) is already @{config.aliases.champion}; "
              "nothing changed")
        return
    figures = {candidate.run_name: {"version": candidate.version, "eval/accuracy": candidate.accuracy,
                                    "infer/agreement": candidate.agreement, config.rule.metric: candidate.score}
               for candidate in candidates}
    registry.set_champion(config.tracking, name, champion.version, config.aliases,
                          {"rule": reason, "figures": figures})
    print(f"{name} version {champion.version} ({champion.run_name}) is now @{config.aliases.champion}: {reason}")


if __name__ == "__main__":
    main()
