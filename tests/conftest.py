"""Fixtures: the real conf/ composed and shrunk, a real SQLite MLflow store per test, real data.

Markers mean what they say: `e2e` for a test that starts a subprocess (the commands, servers),
trains on the real dataset end to end, or builds a store at scale; enforced below, so `-m "not e2e"` stays the quick
in-process set. `slow` for one that takes more than 10 s here, its fixtures included.
"""

import os
import pathlib
import shutil
import subprocess
import tempfile

import mlflow
import pytest
from helpers import FASHION_MNIST_DIR, Store

from pipeline.core import config

# TensorFlow's C++ start-up chatter buries pytest's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HOME_CACHE = pathlib.Path.home() / ".cache"


def pytest_configure(config):
    """Every cache that honours XDG_CACHE_HOME (the pipeline's jit decisions, matplotlib's fonts) goes to a
    folder of this session's, for in-process tests and the commands they start alike: set before any test
    module imports a library, removed at the end."""
    config.cache_folder = tempfile.mkdtemp(prefix="pytest-caches-")
    config.previous_cache_home = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = config.cache_folder
    # matplotlib builds its font cache there on first import, running fc-list: once, here, not inside a test.
    import matplotlib.font_manager  # noqa: F401


def pytest_unconfigure(config):
    if config.previous_cache_home is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = config.previous_cache_home
    shutil.rmtree(config.cache_folder, ignore_errors=True)


def _home_cache_state() -> dict[str, int]:
    """What a test could add to or change in the home folder's cache: its entries and their change times."""
    if not HOME_CACHE.is_dir():
        return {}
    return {entry.name: entry.stat().st_mtime_ns for entry in HOME_CACHE.iterdir()}


@pytest.fixture(autouse=True)
def home_cache_untouched():
    """Fails a test that writes into ~/.cache: a user's later jobs (or the next test run) would start from it."""
    before = _home_cache_state()
    yield
    after = _home_cache_state()
    changed = sorted(name for name in after.keys() | before.keys() if after.get(name) != before.get(name))
    assert not changed, f"the test wrote into {HOME_CACHE}: {', '.join(changed)}; keep it under tmp_path"


@pytest.fixture
def compose(tmp_path):
    """config.compose, with the keys that default into a Hydra job's output folder under tmp_path.

    In-process tests train in one fixed mode (`train.jit_compile=false`) unless they name one: auto's
    probe compiles every candidate mode for each new model, seconds a test. The tests of auto name it,
    and every end-to-end run trains under the product's default, auto."""

    def compose_in_tmp_path(overrides: list[str], config_name: str = "config", return_hydra_config: bool = False):
        if config_name == "config":
            for key, folder in (("export.dir", "export"), ("train.checkpoint_dir", "checkpoints"),
                                ("train.jit_cache_file", "jit_compile.json"), ("tracking.offline_dir", "offline")):
                if not any(override.startswith(f"{key}=") for override in overrides):
                    overrides = [*overrides, f"{key}={tmp_path}/{folder}"]
            if not any(override.startswith("train.jit_compile=") for override in overrides):
                overrides = [*overrides, "train.jit_compile=false"]
        return config.compose(overrides, config_name, return_hydra_config)

    return compose_in_tmp_path


@pytest.fixture(scope="session")
def migrated_store_file(tmp_path_factory):
    """An empty MLflow SQLite store, its schema migrations run once (about a second each time otherwise)."""
    template = Store(tmp_path_factory.mktemp("template-store"))
    mlflow.MlflowClient(template.uri).search_experiments()
    return template.folder / "mlflow.db"


@pytest.fixture
def store(request, tmp_path, migrated_store_file) -> Store:
    """A fresh SQLite store and artifact folder under tmp_path, from a copy of an empty migrated store (a new
    store's migrations cost each command that makes one 1.5 to 2.5 s); a test marked fresh_store starts from no
    file at all, as a first job or sweep on a new machine does."""
    if not request.node.get_closest_marker("fresh_store"):
        shutil.copyfile(migrated_store_file, tmp_path / "mlflow.db")
    return Store(tmp_path)


@pytest.fixture(scope="session")
def real_data() -> list[str]:
    """Overrides for real Fashion-MNIST from Debian's dataset-fashion-mnist: the suite's real data."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"{FASHION_MNIST_DIR} is missing: apt-get install -y dataset-fashion-mnist (as .ci/run does)")
    return ["data=fashion_mnist", "data.source=idx", f"data.idx_dir={FASHION_MNIST_DIR}"]


@pytest.fixture(autouse=True)
def subprocesses_only_in_e2e_tests(request, monkeypatch):
    """Fails a test that starts a subprocess without the e2e marker."""
    if request.node.get_closest_marker("e2e"):
        return

    class Refused(subprocess.Popen):
        def __init__(self, arguments, *args, **kwargs):
            raise AssertionError(f"{request.node.nodeid} starts a subprocess ({arguments}); mark it e2e")

    monkeypatch.setattr(subprocess, "Popen", Refused)


@pytest.fixture
def full_disk(tmp_path):
    """A real file system of 64 KiB (tmpfs, mounted under tmp_path): any model or checkpoint fills it. Needs
    root, as CI and the developers' machines run; skipped where mounting is not allowed."""
    folder = tmp_path / "full-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)
