"""Real parts for testing a pipeline set-up, shared by this project's tests and benchmarks and usable in a
user's own: a throwaway SQLite store, PostgreSQL and `mlflow server` on 127.0.0.1, and a sweep of many
runs made through the MLflow client without training.

Nothing here is imported by the pipeline itself. The servers need PostgreSQL's programs (Debian's
`postgresql` package) and the `server` extra; each is stopped by its process group when its block ends.
"""

import contextlib
import dataclasses
import glob
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import mlflow
import numpy as np
from mlflow.entities import Metric, Param

from pipeline.core import precision

EXPERIMENT = "mixed-precision"  # conf/tracking's default experiment
MODEL_NAME = "mnist-classifier"  # conf/tracking's default registered model


@dataclasses.dataclass
class Store:
    """A real SQLite MLflow store (and artifact folder) in `folder`, and look-ups into it."""

    folder: pathlib.Path

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.folder}/mlflow.db"

    @property
    def overrides(self) -> list[str]:
        return [f"tracking.uri={self.uri}", f"tracking.artifact_root={self.folder}/artifacts"]

    def client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(self.uri)

    def runs(self, experiment: str = EXPERIMENT) -> list:
        client = self.client()
        return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])

    def only_run(self, experiment: str = EXPERIMENT):
        (run,) = self.runs(experiment)
        return run

    def sweep(self, experiment: str = EXPERIMENT) -> tuple[object, list]:
        """The one sweep's parent run and its child runs."""
        runs = self.runs(experiment)
        (parent,) = [run for run in runs if run.data.tags.get("sweep.role") == "parent"]
        return parent, [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]

    def versions(self, name: str = MODEL_NAME) -> list:
        return self.client().search_model_versions(f"name='{name}'")


def free_ports(count: int) -> list[int]:
    """Ports on 127.0.0.1 that were free a moment ago, for servers a test starts."""
    sockets = [socket.socket() for _ in range(count)]
    for open_socket in sockets:
        open_socket.bind(("127.0.0.1", 0))
    ports = [open_socket.getsockname()[1] for open_socket in sockets]
    for open_socket in sockets:
        open_socket.close()
    return ports


def wait_until_up(is_up, process: subprocess.Popen, name: str, timeout: float = 180) -> None:
    """Waits until `is_up()` is true; fails early, with the server's last output, if `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stderr.read() if process.stderr else ""
            raise AssertionError(f"{name} exited: {output[-2000:] if output else ''}")
        if is_up():
            return
        time.sleep(1)
    raise AssertionError(f"{name} did not come up within {timeout} s")


DATABASE_USER = "mlflow"


@contextlib.contextmanager
def postgres_server():
    """A throwaway PostgreSQL on 127.0.0.1 with an empty database `mlflow`; yields (SQLAlchemy URI, port).

    Started as the postgres user when run as root (PostgreSQL refuses root); stopped by its PID.
    """
    folder = pathlib.Path(tempfile.mkdtemp(prefix="pipeline-postgres-"))  # not under pytest's root-only tmp
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    (port,) = free_ports(1)
    _run_as_postgres([_postgres_program("initdb"), "-D", str(folder / "data"), "-U", DATABASE_USER, "--auth=trust",
                      "-E", "UTF8"])
    server = subprocess.Popen(_as_postgres([_postgres_program("postgres"), "-D", str(folder / "data"), "-h",
                                            "127.0.0.1", "-p", str(port), "-k", str(folder)]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_until_up(lambda: subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                                             capture_output=True).returncode == 0, server, "PostgreSQL")
        subprocess.run(["createdb", "-h", "127.0.0.1", "-p", str(port), "-U", DATABASE_USER, "mlflow"], check=True)
        yield f"postgresql+psycopg://{DATABASE_USER}@127.0.0.1:{port}/mlflow", port
    finally:
        os.killpg(server.pid, signal.SIGINT)  # PostgreSQL's fast shutdown
        server.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, artifacts: pathlib.Path, port: int | None = None):
    """`mlflow server` on `port` (default: a free one) of 127.0.0.1, artifacts proxied into `artifacts`; yields its
    URL, and stops it with its workers.

    One worker and no job runner (MLflow's GenAI jobs, a pool of processes): on a 2-core machine the
    default server takes 12 s to start and competes with the training it serves; this one takes 7 s and idles.
    """
    port = port or free_ports(1)[0]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
         "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(lambda: _answers(f"{url}/health"), server, "mlflow server")
        yield url
    finally:
        # At once, with its workers, as a crash or a cut network: stopped gracefully, uvicorn goes on answering
        # requests on open connections for seconds (a client keeps its connections open).
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=60)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        return False


def _postgres_program(name: str) -> str:
    """A PostgreSQL server program: on the PATH, else in Debian's versioned folder."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is missing: apt-get install -y postgresql (as .ci/run does)")
    return found


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run_as_postgres(command: list[str]) -> None:
    subprocess.run(_as_postgres(command), check=True, capture_output=True)


def synthetic_sweep(client: mlflow.MlflowClient, experiment_id: str, job_count: int, register_as: str | None = None,
                    seed: int = 0) -> str:
    """A finished sweep of `job_count` child runs made through the MLflow client, no training: policies,
    batch sizes and seeds in turn, with the figures the report and the promotion rule read. With
    `register_as`, each job also registers a version. Returns the parent run id."""
    rng = np.random.default_rng(seed)
    policies = list(precision.POLICIES)
    sweep_id = f"/synthetic/sweep-{seed}-{job_count}"
    parent = client.create_run(experiment_id, run_name="sweep-synthetic",
                               tags={"sweep.id": sweep_id, "sweep.role": "parent"})
    if register_as:
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            client.create_registered_model(register_as)
    for index in range(job_count):
        policy = policies[index % len(policies)]
        batch_size = (32, 64, 128, 256)[(index // 3) % 4]
        run = client.create_run(experiment_id, run_name=f"mlp-{policy}-bs{batch_size}",
                                tags={"mlflow.parentRunId": parent.info.run_id, "sweep.id": sweep_id})
        now = int(time.time() * 1000)
        metrics = {"eval/accuracy": 0.83 + 0.01 * rng.standard_normal(), "infer/agreement": 1.0,
                   "train/examples_per_sec": 1e5 * (1 + 0.1 * rng.standard_normal()), "train/step_time_ms": 1.0,
                   "train/peak_memory_mb": 1100.0, "infer/latency_ms_p50": 0.2,
                   "train/peak_tensor_mb": 40.0 + batch_size * (0.2 if precision.is_reference(policy) else 0.1),
                   "train/step_transient_mb": batch_size * (0.2 if precision.is_reference(policy) else 0.1)
                   * (1 + 0.05 * rng.standard_normal()),
                   "infer/examples_per_sec": 8e5 * (1 + 0.1 * rng.standard_normal())}
        params = {"model.name": "mlp", "precision.policy": policy, "data.batch_size": str(batch_size),
                  "train.learning_rate": "0.001", "train.seed": str(index // 12)}
        client.log_batch(run.info.run_id, metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()],
                         params=[Param(key, value) for key, value in params.items()])
        client.set_terminated(run.info.run_id, "FINISHED")
        if register_as:
            client.create_model_version(register_as, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id,
                                        tags={"sweep.id": sweep_id})
    client.set_terminated(parent.info.run_id, "FINISHED")
    return parent.info.run_id
