"""`python -m pipeline.promote`: sets the `champion` alias on the version the rule picks (conf/promote.yaml).

The rule itself is pipeline/analysis/champion.py; running the command again changes nothing.
"""

import hydra
from omegaconf import DictConfig

import pipeline.core.config  # registers the schemas conf/ names; validate_command
from pipeline import PipelineError, failures


@hydra.main(version_base="1.3", config_path="../conf", config_name="promote")
@failures.reporting_errors
def main(config: DictConfig) -> None:
    pipeline.core.config.validate_command(config)  # before the store is opened
    from pipeline.analysis import champion
    from pipeline.tracking import registry, sweeps
    from pipeline.tracking.store import NotFoundError

    name = config.tracking.registered_model
    if not name:
        raise PipelineError("tracking.registered_model is null: nothing to promote; name the registered model")
    parent_run = sweeps.require_sweep(config.tracking, config.sweep_id)
    sweep_id = parent_run.data.tags[sweeps.SWEEP_ID_TAG]
    candidates = sweep_candidates(config.tracking, name, parent_run, config.rule.metric)
    if not candidates:
        raise NotFoundError(f"tracking.registered_model={name} has no version registered by sweep {sweep_id}; "
                            "check the name (the MLflow UI's Models page), or run the sweep with registration on")
    if all(candidate.score is None for candidate in candidates):
        raise NotFoundError(f"rule.metric={config.rule.metric} is not logged by the sweep's runs; "
                            "use a logged metric such as infer/examples_per_sec or infer/latency_ms_p50")
    try:
        chosen, reason = champion.choose_champion(candidates, config.rule)
    except champion.NoChampionError as error:
        raise champion.NoChampionError(f"no champion for sweep {sweep_id}: {error}") from None
    if registry.current_alias(config.tracking, name, config.aliases.champion) == chosen.version:
        print(f"{name} version {chosen.version} ({chosen.run_name}, {chosen.export_format}) is already "
              f"@{config.aliases.champion}; nothing changed")
        return
    figures = {f"{candidate.run_name} {candidate.export_format}": {
        "version": candidate.version, "accuracy": candidate.accuracy, "agreement": candidate.agreement,
        config.rule.metric: candidate.score} for candidate in candidates}
    registry.set_champion(config.tracking, name, chosen.version, config.aliases, {"rule": reason, "figures": figures})
    print(f"{name} version {chosen.version} ({chosen.run_name}, {chosen.export_format}) is now "
          f"@{config.aliases.champion}: {reason}")


def sweep_candidates(tracking_config, name: str, parent_run, metric: str) -> list:
    """Every version of `name` that the sweep of `parent_run` registered, as the promotion rule reads it."""
    from pipeline.analysis import champion
    from pipeline.tracking import registry

    return [champion.candidate(version, run, metric)
            for version, run in registry.sweep_versions(tracking_config, name, parent_run)]


if __name__ == "__main__":
    main()
