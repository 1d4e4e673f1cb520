"""The MLflow model registry: registering each job's model, and promoting a sweep's champion."""

import dataclasses
import json

import mlflow


@dataclasses.dataclass
class Candidate:
    """A registered version with the figures the promotion rule reads."""

    version: str
    run_name: str
    policy: str
    accuracy: float | None
    agreement: float | None
    score: float | None


def register(model_uri: str, name: str, tags: dict[str, str], description: str) -> str:
    """Registers `model_uri` as a new version of `name`, tagged and described; returns the version."""
    version = mlflow.register_model(model_uri, name, tags=tags)
    mlflow.MlflowClient().update_model_version(name, version.version, description=description)
    return version.version


def sweep_candidates(tracking_config, name: str, sweep_id: str, metric: str) -> list[Candidate]:
    """Every version of `name` registered by the sweep `sweep_id`, with its run's figures."""
    client = mlflow.MlflowClient(tracking_config.uri)
    candidates = []
    for version in client.search_model_versions(f"name='{name}'"):
        if version.tags.get("sweep.id") != sweep_id:
            continue
        run = client.get_run(version.run_id)
        metrics = run.data.metrics
        candidates.append(Candidate(
            version=version.version,
            run_name=run.info.run_name,
            policy=run.data.params.get("precision.policy", "?"),
            accuracy=metrics.get("eval/accuracy"),
            agreement=metrics.get("infer/agreement"),
            score=metrics.get(metric),
        ))
    return sorted(candidates, key=lambda candidate: int(candidate.version))


def current_alias(tracking_config, name: str, alias: str) -> str | None:
    client = mlflow.MlflowClient(tracking_config.uri)
    try:
        return client.get_model_version_by_alias(name, alias).version
    except mlflow.exceptions.MlflowException:
        return None


def set_champion(tracking_config, name: str, version: str, aliases, reason: dict) -> None:
    """Points `aliases.champion` at `version`, the former champion keeping `aliases.previous`."""
    client = mlflow.MlflowClient(tracking_config.uri)
    former = current_alias(tracking_config, name, aliases.champion)
    if former is not None:
        client.set_registered_model_alias(name, aliases.previous, former)
    client.set_registered_model_alias(name, aliases.champion, version)
    client.set_model_version_tag(name, version, "promotion.rule", reason["rule"])
    client.set_model_version_tag(name, version, "promotion.figures", json.dumps(reason["figures"]))
