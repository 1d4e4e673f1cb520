"""`python -m pipeline.sync <folder or store> [tracking.uri=<server>]`: uploads runs a job kept offline.

A job whose tracking server went away kept its run in a local store in its output folder
(pipeline/tracking/offline.py). This command finds those stores under a folder (a job's, or a whole
sweep's), and puts each run on the server, into the run the job started there (or a new one if the
server never saw it): params, tags, every metric point with its step and time, dataset inputs,
artifacts, the logged models, the status, and the registrations the job could not make (through the
same gate as a live job). What is uploaded is noted in the offline store: a second sync uploads
nothing, and one that was interrupted picks up where it stopped.
"""

import argparse
import json
import logging
import pathlib
import shutil
import sys
import tempfile

import mlflow
import yaml
from mlflow.entities import DatasetInput, LoggedModelOutput, LoggedModelStatus, Metric, Param, RunTag
from omegaconf import OmegaConf

from pipeline import PipelineError, console
from pipeline.tracking import liveness, offline, pages, registry, store, sweeps

logger = logging.getLogger("pipeline")

SYNCED_TAG = "offline.synced_to"  # on the offline run: "<server> <run id>", once all of it is uploaded
_MODEL_TAG, _REGISTERED_TAG = "offline.synced_model.", "offline.registered."
_NOT_COPIED = (offline.SERVER_URI_TAG, offline.SERVER_RUN_TAG, offline.SINCE_TAG, SYNCED_TAG)


def sync(path: pathlib.Path, server_uri: str | None = None, patience_s: float = 60.0) -> tuple[list[str], int]:
    """Uploads every offline run under `path` (a folder, or a store's mlflow.db) not uploaded yet; returns the
    uploaded runs' lines and how many were already on the server.

    Raises:
        PipelineError: no offline store under `path`, or a server that does not answer.
    """
    stores = [path] if path.is_file() else sorted(path.rglob(offline.STORE_FILE))
    if not stores:
        raise PipelineError(f"{path}: no offline store ({offline.STORE_FILE}) there; point pipeline.sync at the folder "
                            "a job named when its tracking server went away (its offline/ folder, or the sweep's)")
    offline.apply_patience(patience_s)
    uploaded, already = [], 0
    for store_file in stores:
        local_uri = f"sqlite:///{store_file.resolve()}"
        local = store.client(local_uri)
        experiment_ids = [experiment.experiment_id for experiment in local.search_experiments()]
        for run in pages.search_all_runs(local, experiment_ids):
            if run.data.tags.get(SYNCED_TAG):
                already += 1
                continue
            target_uri = server_uri or run.data.tags.get(offline.SERVER_URI_TAG)
            if not target_uri:
                raise PipelineError(f"{store_file}: run {run.info.run_name} names no server; add tracking.uri=<server>")
            store.check_server(target_uri)
            uploaded.append(_upload_run(local_uri, run, target_uri))
    for record_file in ([] if path.is_file() else sorted(path.rglob(sweeps.RECORD_FILE))):
        _end_sweep(record_file.parent, server_uri)
    return uploaded, already


def _end_sweep(sweep_folder: pathlib.Path, server_uri: str | None) -> None:
    """A sweep that ended while its server was gone: its parent run ends FINISHED, or FAILED if a job failed."""
    record = sweeps.read_record(sweep_folder)
    if not record.get("ended_offline") or record.get("synced"):
        return
    server = store.client(server_uri or record["tracking_uri"])
    parent = server.get_run(record["parent_run_id"])
    jobs = pages.search_all_runs(server, [parent.info.experiment_id],
                                 f"tags.`{sweeps.PARENT_RUN_TAG}` = '{parent.info.run_id}'")
    failed = any(job.info.status == "FAILED" for job in jobs)
    server.set_terminated(parent.info.run_id, "FAILED" if failed else "FINISHED")
    if liveness.REASON_TAG in parent.data.tags:
        server.delete_tag(parent.info.run_id, liveness.REASON_TAG)
    (sweep_folder / sweeps.RECORD_FILE).write_text(json.dumps(record | {"synced": True}))


def _upload_run(local_uri: str, run, server_uri: str) -> str:
    local, server = store.client(local_uri), store.client(server_uri)
    local_id = run.info.run_id
    target_id = _target_run(local, server, run)
    on_server = server.get_run(target_id)
    params = [Param(key, value) for key, value in run.data.params.items() if key not in on_server.data.params]
    tags = [RunTag(key, value.replace(local_id, target_id)) for key, value in run.data.tags.items()
            if not key.startswith((*_NOT_COPIED, _MODEL_TAG, _REGISTERED_TAG, offline.PENDING_TAG_PREFIX))]
    server.log_batch(target_id, params=params, tags=tags)
    metrics = [Metric(point.key, point.value, point.timestamp, point.step) for key in run.data.metrics
               for point in local.get_metric_history(local_id, key)]
    for start in range(0, len(metrics), offline.BATCH_LIMIT):  # points the server has already are skipped by its store
        server.log_batch(target_id, metrics=metrics[start:start + offline.BATCH_LIMIT])
    known = {(dataset.dataset.name, dataset.dataset.digest) for dataset in on_server.inputs.dataset_inputs}
    inputs = [DatasetInput(dataset.dataset, dataset.tags) for dataset in run.inputs.dataset_inputs
              if (dataset.dataset.name, dataset.dataset.digest) not in known]
    if inputs:
        server.log_inputs(target_id, datasets=inputs)
    artifacts = pathlib.Path(mlflow.artifacts.download_artifacts(artifact_uri=run.info.artifact_uri))
    if any(artifacts.iterdir()):
        server.log_artifacts(target_id, str(artifacts))
    model_ids = _upload_models(local, run, server, target_id)
    registered = _register_pending(local, run, server_uri, target_id, model_ids)
    server.set_terminated(target_id, run.info.status, end_time=run.info.end_time)
    if run.info.status != "KILLED" and liveness.REASON_TAG in on_server.data.tags:
        server.delete_tag(target_id, liveness.REASON_TAG)  # ended as KILLED by liveness while its job went on offline
    local.set_tag(local_id, SYNCED_TAG, f"{server_uri} {target_id}")
    return (f"{run.info.run_name} ({target_id}): {run.info.status}, {len(metrics)} metric points, "
            f"{len(model_ids)} model(s)" + (f", registered {', '.join(registered)}" if registered else ""))


def _target_run(local, server, run) -> str:
    """The server's run the job started (its id is a tag), or a new one if the server never saw it."""
    try:
        return server.get_run(run.data.tags[offline.SERVER_RUN_TAG]).info.run_id
    except (KeyError, mlflow.exceptions.MlflowException):
        pass
    name = local.get_experiment(run.info.experiment_id).name
    experiment = server.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else server.create_experiment(name)
    created = server.create_run(experiment_id, start_time=run.info.start_time, run_name=run.info.run_name)
    return created.info.run_id


def _upload_models(local, run, server, target_id: str) -> dict[str, str]:
    """The run's logged models, each once (what was uploaded is noted); returns model id by name on the server."""
    uploaded = {key.removeprefix(_MODEL_TAG): value for key, value in run.data.tags.items()
                if key.startswith(_MODEL_TAG)}
    experiment_id = server.get_run(target_id).info.experiment_id
    for model in local.search_logged_models([run.info.experiment_id],
                                            filter_string=f"source_run_id = '{run.info.run_id}'"):
        if model.name in uploaded:
            continue
        created = server.create_logged_model(experiment_id, name=model.name, source_run_id=target_id,
                                             tags=model.tags, params=model.params, model_type=model.model_type)
        with tempfile.TemporaryDirectory(prefix="sync-model-") as folder:
            copy = pathlib.Path(folder) / "model"
            shutil.copytree(mlflow.artifacts.download_artifacts(model.artifact_location), copy)
            _point_at(copy / "MLmodel", target_id, created.model_id)
            server.log_model_artifacts(created.model_id, str(copy))
        server.finalize_logged_model(created.model_id, LoggedModelStatus.READY)
        server.log_outputs(target_id, [LoggedModelOutput(created.model_id, step=0)])
        local.set_tag(run.info.run_id, _MODEL_TAG + model.name, created.model_id)
        uploaded[model.name] = created.model_id
    return uploaded


def _point_at(mlmodel_file: pathlib.Path, run_id: str, model_id: str) -> None:
    """The model's MLmodel names the server's run and model, as if it had been logged there."""
    if mlmodel_file.is_file():
        description = yaml.safe_load(mlmodel_file.read_text())
        description |= {"run_id": run_id, "model_id": model_id}
        mlmodel_file.write_text(yaml.safe_dump(description, sort_keys=False))


def _register_pending(local, run, server_uri: str, target_id: str, model_ids: dict[str, str]) -> list[str]:
    """The registrations the job could not make, made now if the job's gate lets them (once each)."""
    made = []
    floors = OmegaConf.create({key.removeprefix("tracking."): _number(value) for key, value in run.data.params.items()
                               if key.startswith("tracking.register")})
    for key, value in run.data.tags.items():
        export_format = key.removeprefix(offline.PENDING_TAG_PREFIX)
        if not key.startswith(offline.PENDING_TAG_PREFIX) or _REGISTERED_TAG + export_format in run.data.tags:
            continue
        pending = json.loads(value)
        pending["tags"]["run_id"] = target_id  # a job offline from its start did not know it
        floors.registered_model = pending["registered_model"]
        refusal = registry.gate(floors, pending["accuracy"], pending["agreement"], export_format)
        if refusal:
            store.client(server_uri).set_tag(target_id, "registry.skipped", refusal)
            continue
        model_name = "model" if export_format == "saved_model" else f"model_{export_format}"
        if model_name not in model_ids:  # logged on the server before it went away
            (logged,) = store.client(server_uri).search_logged_models(
                [run_experiment(server_uri, target_id)],
                filter_string=f"source_run_id = '{target_id}' AND name = '{model_name}'")
            model_ids[model_name] = logged.model_id
        mlflow.set_tracking_uri(server_uri)
        with console.without_mlflow_prints():
            version = registry.register(f"models:/{model_ids[model_name]}", pending["registered_model"],
                                        pending["tags"], pending["description"])
        local.set_tag(run.info.run_id, _REGISTERED_TAG + export_format, version)
        made.append(f"{pending['registered_model']} version {version}")
    return made


def run_experiment(uri: str, run_id: str) -> str:
    return store.client(uri).get_run(run_id).info.experiment_id


def _number(value: str):
    try:
        return float(value)
    except ValueError:
        return None if value == "None" else value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sync", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=pathlib.Path, help="a job's or sweep's output folder, or an offline mlflow.db")
    parser.add_argument("overrides", nargs="*", help="tracking.uri=<server> (default: the server the job used), "
                                                     "tracking.patience_s=<seconds> (default 60)")
    arguments = parser.parse_args(argv)
    settings = dict(override.split("=", 1) for override in arguments.overrides if "=" in override)
    unknown = set(settings) - {"tracking.uri", "tracking.patience_s"} or [item for item in arguments.overrides
                                                                         if "=" not in item]
    console.setup(verbose=False)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(console.ConsoleFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        if unknown:
            raise PipelineError(f"{', '.join(sorted(unknown))}: pipeline.sync takes only tracking.uri=<server> and "
                                "tracking.patience_s=<seconds> after the folder")
        uploaded, already = sync(arguments.path, settings.get("tracking.uri"),
                                 float(settings.get("tracking.patience_s", 60)))
    except PipelineError as error:
        logger.error("%s", error)
        sys.exit(1)
    for line in uploaded:
        logger.info("uploaded %s", line)
    if not uploaded:
        logger.info("nothing to upload: %d run(s) under %s already on the server", already, arguments.path)


if __name__ == "__main__":
    main()
