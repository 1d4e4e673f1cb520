"""A tracking server that goes away mid-job costs telemetry latency, never the training: real `mlflow server`
processes, stopped and started again on the same port and store."""

import re
import signal
import subprocess
import sys
import time

import mlflow
import pytest
from helpers import MODEL_NAME, QUICK_INFER, python_environment, run_module, run_pipeline, wait_for_line

from pipeline.testing import free_ports, mlflow_server
from pipeline.tracking import offline

OUTAGE_LINES = ("unreachable", "Retrying", "Traceback", "Failed to log run data")


def test_patience_bounds_mlflow_retries(monkeypatch):
    """Back-off 2+4+8+16 s and five 5 s timeouts fit in the default 60 s; no patience means one try."""
    for name in ("MAX_RETRIES", "BACKOFF_FACTOR", "BACKOFF_JITTER", "TIMEOUT"):
        monkeypatch.setenv(f"MLFLOW_HTTP_REQUEST_{name}", "1")  # put back as they were after the test
    offline.apply_patience(60)
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

    retries, timeout = MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(), MLFLOW_HTTP_REQUEST_TIMEOUT.get()
    assert (retries, timeout) == (5, 5) and (2**retries - 2) + (retries + 1) * timeout <= 60
    offline.apply_patience(0)
    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 0


@pytest.mark.e2e
@pytest.mark.slow
def test_a_server_gone_mid_sweep_costs_no_work_and_sync_puts_the_sweep_on_it(tmp_path, real_data):
    """A 2-job sweep and a third job log to a server that stops while they train: the sweep's jobs finish every
    stage offline (the second starts offline), the third is stopped by SIGTERM; `pipeline.sync` puts all three
    on the restarted server, a second sync uploads nothing, the report shows the whole sweep, and the stopped
    job resumes there to the end."""
    (port,) = free_ports(1)
    backend, artifacts = f"sqlite:///{tmp_path}/server.db", tmp_path / "server-artifacts"
    common = [*real_data, "tracking=server", f"tracking.uri=http://127.0.0.1:{port}", "tracking.patience_s=5",
              *QUICK_INFER]
    commands = {"sweep": ["-m", *common, "model=mlp", "train.epochs=8", "precision=float32,mixed_bfloat16",
                          f"hydra.sweep.dir={tmp_path}/sweep"],
                "stopped": [*common, "model=cnn", "train.epochs=3", "train.max_steps=1000", "stages=[train]",
                            f"hydra.run.dir={tmp_path}/stopped"]}
    with mlflow_server(backend, artifacts, port) as url:
        outputs = {name: (tmp_path / f"{name}.txt").open("w") for name in commands}
        jobs = {name: subprocess.Popen([sys.executable, "-m", "pipeline", *arguments], cwd=tmp_path,
                                       env=python_environment(), stdout=outputs[name], stderr=subprocess.STDOUT)
                for name, arguments in commands.items()}
        wait_for_line(tmp_path / "stopped" / "__main__.log", "train.jit_compile=", jobs["stopped"])
        _wait_for_loss_on(url, jobs["sweep"])
    time.sleep(3)
    jobs["stopped"].send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert jobs["stopped"].wait(timeout=60) == 128 + signal.SIGTERM and time.monotonic() - signalled < 10
    assert jobs["sweep"].wait(timeout=600) == 0
    output = {name: (tmp_path / f"{name}.txt").read_text() for name in jobs}
    outage_lines = [line for line in output["sweep"].splitlines() if any(text in line for text in OUTAGE_LINES)]
    # Two a job (since when and where the run went; how to upload it), one at the sweep's end.
    assert len(outage_lines) == 5 and all("unreachable" in line for line in outage_lines), output["sweep"]
    assert sum("1 model registration(s) pending" in line for line in outage_lines) == 2
    (stop_line,) = [line for line in output["stopped"].splitlines() if "SIGTERM" in line]
    assert "kept offline" in stop_line and "Traceback" not in output["stopped"]

    kept = mlflow.MlflowClient(f"sqlite:///{tmp_path}/sweep/0/offline/mlflow.db")
    (offline_run,) = kept.search_runs([experiment.experiment_id for experiment in kept.search_experiments()])
    kept_loss = [(point.step, point.value) for point in kept.get_metric_history(offline_run.info.run_id, "train/loss")]
    assert sorted(step for step, _ in kept_loss) == list(range(10, 8 * 468 + 1, 10))  # every point, none twice
    assert offline_run.info.status == "FINISHED" and "registry.pending.saved_model" in offline_run.data.tags

    with mlflow_server(backend, artifacts, port) as url:
        result = run_module("pipeline.sync", [str(tmp_path)], cwd=tmp_path)
        assert result.returncode == 0 and result.stdout.count("uploaded ") == 3, result.stdout + result.stderr
        server = mlflow.MlflowClient(url)
        run = server.get_run(offline_run.data.tags[offline.SERVER_RUN_TAG])
        assert run.info.status == "FINISHED" and run.data.metrics["eval/accuracy"] > 0.6
        server_loss = [(point.step, point.value) for point in server.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(server_loss) == sorted(kept_loss)  # the outage left no gap and no duplicate
        versions = server.search_model_versions(f"name='{MODEL_NAME}'")
        assert len(versions) == 2 and run.info.run_id in {version.run_id for version in versions}
        models = server.search_logged_models([run.info.experiment_id],
                                             filter_string=f"source_run_id = '{run.info.run_id}'")
        assert {model.name for model in models} == {"model", "keras_model"}
        resume = re.search(r"train\.resume=(\w+)", stop_line)[1]
        assert server.get_run(resume).info.status == "KILLED"

        again = run_module("pipeline.sync", [str(tmp_path)], cwd=tmp_path)
        assert "nothing to upload: 3 run(s)" in again.stdout and "uploaded" not in again.stdout
        report = run_module("pipeline.report", ["tracking=server", f"tracking.uri={url}",
                                                f"sweep_id={tmp_path}/sweep"], cwd=tmp_path)
        assert report.returncode == 0 and report.stdout.count("mlp-") >= 2, report.stdout + report.stderr
        parent = server.get_run(run.data.tags["mlflow.parentRunId"])
        assert parent.info.status == "FINISHED"

        resumed = run_pipeline([*commands["stopped"], f"train.resume={resume}"], cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stdout[-3000:]
        finished = server.get_run(resume)
        assert finished.info.status == "FINISHED" and finished.data.metrics["train/steps"] == 1000


def _wait_for_loss_on(url: str, job: subprocess.Popen, timeout_s: float = 180) -> None:
    """Until the server holds a train/loss point: the job is training and logging to it."""
    client, deadline = mlflow.MlflowClient(url), time.monotonic() + timeout_s
    while time.monotonic() < deadline and job.poll() is None:
        experiment = client.get_experiment_by_name("mixed-precision")
        if experiment and client.search_runs([experiment.experiment_id], "metrics.`train/loss` > 0"):
            return
        time.sleep(0.5)
    raise AssertionError("no train/loss reached the server")
