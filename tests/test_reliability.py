"""Bad input gets a clear one-line error and a non-zero exit; nothing is left RUNNING."""

import subprocess
import sys
import time

import hydra.errors
import omegaconf.errors
import pytest
from helpers import python_environment, run_pipeline

from pipeline import config as config_lib
from pipeline.tracking import store as store_lib


@pytest.mark.parametrize("overrides,message", [
    (["data.batch_size=0"], "data.batch_size=0 must be positive"),
    (["data.batch_size=-8"], "data.batch_size=-8 must be positive"),
    (["train.epochs=0"], "train.epochs=0 must be positive"),
    (["train.max_steps=-1"], "train.max_steps=-1 must be positive"),
    (["train.learning_rate=0"], "train.learning_rate=0.0 must be positive"),
    (["train.steps_per_call=0"], "train.steps_per_call=0 must be positive"),
    (["train.checkpoint_every_steps=0"], "train.checkpoint_every_steps=0 must be positive"),
    (["data.batch_size=60001"], "data.batch_size=60001 exceeds the 60000 training examples of mnist"),
    (["data.source=idx"], "data.source=idx needs data.idx_dir"),
    (["stages=[evaluate]"], "stages=['evaluate'] is not a run of stages"),
    (["stages=[train,deploy]"], "stages=['train', 'deploy'] is not a run of stages"),
    (["data.name=cifar10"], "data.name='cifar10' is not a dataset"),
    (["train.jit_compile=always"], "train.jit_compile='always' is not a mode; use auto, false, step, true"),
])
def test_out_of_range_or_conflicting_values_are_named(compose, overrides, message):
    with pytest.raises(config_lib.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_lib.validate(compose(overrides))


@pytest.mark.parametrize("override,message", [
    ("data.batch_size=abc", "could not be converted to Integer"),
    ("train.epochs=1.5", "could not be converted to Integer"),
    ("precision.policy=float8", "Invalid value 'float8', expected one of [float32, mixed_float16, mixed_bfloat16]"),
    ("export.serving_policy=fp8", "Invalid value 'fp8'"),
    ("data.source=web", "Invalid value 'web', expected one of [tfds, idx]"),
    ("precision=float8", "Could not find 'precision/float8'"),
    ("model=resnet", "Could not find 'model/resnet'"),
])
def test_wrong_types_and_names_fail_at_composition(compose, override, message):
    with pytest.raises((hydra.errors.HydraException, omegaconf.errors.OmegaConfBaseException)) as error:
        compose([override])
    assert message in f"{error.value} {error.value.__cause__}"


def test_every_shipped_config_passes_validation(compose):
    for overrides in ([], ["data=fashion_mnist", "data.source=idx"], ["model=cnn", "precision=mixed_float16"]):
        config_lib.validate(compose(overrides))


@pytest.mark.e2e
def test_bad_config_exits_with_one_line_before_tensorflow_is_imported(tmp_path):
    script = (
        "import runpy, sys\n"
        "sys.argv = ['pipeline', 'data.batch_size=0', 'tracking.uri=sqlite:///never/mlflow.db']\n"
        "try:\n    runpy.run_module('pipeline', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    print('exit', exit.code, 'tensorflow' in sys.modules, 'mlflow' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            env=python_environment(), timeout=120)
    assert "exit 1 False False" in result.stdout, result.stderr
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "data.batch_size=0 must be positive" in errors[0]
    assert not (tmp_path / "never").exists()


@pytest.mark.e2e
def test_unreachable_tracking_server_fails_fast_before_training(tmp_path, real_data):
    started = time.monotonic()
    result = run_pipeline(["tracking.uri=http://127.0.0.1:9", *real_data], cwd=tmp_path)
    assert time.monotonic() - started < 30  # MLflow's own retries would take minutes
    assert result.returncode == 1
    assert "tracking.uri=http://127.0.0.1:9 is unreachable" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_unwritable_store_path_is_a_clear_error(compose, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    config = compose([f"tracking.uri=sqlite:///{blocker}/store/mlflow.db"])
    with pytest.raises(store_lib.TrackingError, match=f"cannot create {blocker}/store"):
        store_lib.prepare(config.tracking)


@pytest.mark.e2e
def test_diverging_run_fails_with_reason_and_registers_nothing(tmp_path, store, real_data):
    result = run_pipeline([*real_data, "train.learning_rate=1e30", "train.max_steps=200", *store.overrides],
                          cwd=tmp_path)
    assert result.returncode == 1
    run = store.only_run()
    assert run.info.status == "FAILED"
    error = run.data.tags["error"]
    assert error.startswith("TrainingDivergedError: loss is ")
    assert int(error.split(" at step ")[1].split(";")[0]) <= 20  # stopped within a few steps
    assert store.versions() == []
