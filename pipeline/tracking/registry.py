"""The MLflow model registry: registering each job's model, and promoting a sweep's champion."""

import json

import mlflow

from pipeline.core.config import TrackingConfig
from pipeline.tracking import pages, store, sweeps


def register(model_uri: str, name: str, tags: dict[str, str], description: str) -> str:
    """Registers `model_uri` as a new version of `name` in the current store; returns the version."""
    version = mlflow.register_model(model_uri, name, tags=tags)
    store.client().update_model_version(name, version.version, description=description)
    return version.version


def gate(tracking_config: TrackingConfig, accuracy: float, agreement: float,
         export_format: str = "saved_model") -> str | None:
    """Why a job's model must not be registered (below a floor), or None when it may be.

    int8 formats round weights and activations: their parity with the float model has its own floor.
    """
    if not tracking_config.registered_model:
        return None
    if accuracy < tracking_config.register_min_accuracy:
        return (f"eval accuracy {accuracy:.4f} < tracking.register_min_accuracy="
                f"{tracking_config.register_min_accuracy}")
    key = "register_min_agreement_int8" if export_format.endswith("int8") else "register_min_agreement"
    if agreement < tracking_config[key]:
        return f"export parity infer/agreement {agreement:.4f} < tracking.{key}={tracking_config[key]}"
    return None


def sweep_versions(tracking_config: TrackingConfig, name: str, parent_run) -> list[tuple]:
    """(model version, its run) for every version of `name` registered by the sweep of `parent_run`, oldest
    version first; the versions and runs are read page by page, however many there are."""
    client = store.client(tracking_config.uri)
    sweep_id = parent_run.data.tags[sweeps.SWEEP_ID_TAG]
    jobs = {job.info.run_id: job for job in sweeps.sweep_jobs(tracking_config, parent_run)}
    versions = [version for version in pages.search_all_model_versions(client, f"name='{name}'")
                if version.tags.get("sweep.id") == sweep_id and version.run_id in jobs]
    return [(version, jobs[version.run_id]) for version in sorted(versions, key=lambda version: int(version.version))]


def current_alias(tracking_config: TrackingConfig, name: str, alias: str) -> str | None:
    try:
        return store.client(tracking_config.uri).get_model_version_by_alias(name, alias).version
    except mlflow.exceptions.MlflowException:
        return None


def set_champion(tracking_config: TrackingConfig, name: str, version: str, aliases, reason: dict) -> None:
    """Points `aliases.champion` at `version`, the former champion keeping `aliases.previous`."""
    client = store.client(tracking_config.uri)
    former = current_alias(tracking_config, name, aliases.champion)
    if former is not None:
        client.set_registered_model_alias(name, aliases.previous, former)
    client.set_registered_model_alias(name, aliases.champion, version)
    client.set_model_version_tag(name, version, "promotion.rule", reason["rule"])
    client.set_model_version_tag(name, version, "promotion.figures", json.dumps(reason["figures"]))
