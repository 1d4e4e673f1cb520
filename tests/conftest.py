"""Shared fixtures: the real conf/ composed and shrunk, a real SQLite MLflow store per test."""

import os
import pathlib
import socket
import subprocess
import sys
import tempfile

import hydra
import pytest

import pipeline.config  # noqa: F401  registers the config schemas compose() needs

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "conf"
FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")

# TensorFlow's C++ start-up chatter buries pytest's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def compose(overrides: list[str], config_name: str = "config", return_hydra_config: bool = False):
    """The real config from conf/, as `python -m pipeline <overrides>` would see it.

    Outside a Hydra run there is no job output folder, so the keys that default into it point
    at a fresh temporary folder unless the overrides set them.
    """
    if config_name == "config":
        scratch = tempfile.mkdtemp(prefix="pipeline-test-")
        for key, folder in (("export.dir", "export"), ("train.checkpoint_dir", "checkpoints")):
            if not any(override.startswith(f"{key}=") for override in overrides):
                overrides = [*overrides, f"{key}={scratch}/{folder}"]
    with hydra.initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra.compose(config_name=config_name, overrides=overrides, return_hydra_config=return_hydra_config)


@pytest.fixture
def tracking_overrides(tmp_path) -> list[str]:
    """Points tracking at a fresh SQLite store and artifact folder under tmp_path."""
    return [
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"tracking.artifact_root={tmp_path}/artifacts",
    ]


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> pathlib.Path:
    """Real Fashion-MNIST from Debian's dataset-fashion-mnist: the suite's real data."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"{FASHION_MNIST_DIR} is missing: apt-get install -y dataset-fashion-mnist (as .ci/run does)")
    return FASHION_MNIST_DIR


def run_pipeline(arguments: list[str], cwd: pathlib.Path, timeout: float = 600,
                 environment: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs `python -m pipeline <arguments>` as a user would, from `cwd`, with `environment` added."""
    return run_module("pipeline", arguments, cwd, timeout, environment)


def run_module(module: str, arguments: list[str], cwd: pathlib.Path, timeout: float = 600,
               environment: dict[str, str] | None = None):
    """Runs `python -m <module> <arguments>` in a subprocess, from `cwd`, with `environment` added."""
    environment = os.environ | {"PYTHONPATH": str(REPO_ROOT), "HYDRA_FULL_ERROR": "1"} | (environment or {})
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_ports(count: int) -> list[int]:
    """Ports on 127.0.0.1 that were free a moment ago, for servers a test starts."""
    sockets = [socket.socket() for _ in range(count)]
    for open_socket in sockets:
        open_socket.bind(("127.0.0.1", 0))
    ports = [open_socket.getsockname()[1] for open_socket in sockets]
    for open_socket in sockets:
        open_socket.close()
    return ports
