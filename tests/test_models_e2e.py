"""End to end: the ViT under each policy on real Fashion-MNIST, a size sweep, a user's own builder, and
an image dataset of another shape from one YAML file, through all four stages, the registry and serving."""

import gzip
import struct

import mlflow
import numpy as np
import pytest
from helpers import MODEL_NAME, QUICK_INFER, python_environment, run_pipeline

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

USER_MODULE = '''
import keras


def build(input_shape, num_classes, units=32):
    """A user's model, outside the pipeline package."""
    inputs = keras.Input(shape=input_shape)
    hidden = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    hidden = keras.layers.Dense(units, activation="relu")(keras.layers.Flatten()(hidden))
    return keras.Model(inputs, keras.layers.Dense(num_classes, dtype="float32")(hidden))
'''

RGB_DATASET = '''# A 32x32 colour dataset of 5 classes from IDX files: all the pipeline needs to know of it.
defaults:
  - /schema_data@_here_   # the pipeline's data schema
  - _self_

name: shapes5            # the runs' dataset name
source: idx              # read from data.idx_dir
tfds_data_dir: null      # unused here
idx_dir: {folder}        # the IDX files
batch_size: 32           # positive int
image_shape: [32, 32, 3] # height, width, channels
num_classes: 5           # labels 0..4
class_names: [red, green, blue, grey, black]   # one per class
train:                   # the training split
  name: train            # its name
  size: 600              # its examples
  idx_images: train-images   # image file
  idx_labels: train-labels   # label file
test:                    # the evaluation split
  name: test             # its name
  size: 200              # its examples
  idx_images: test-images    # image file
  idx_labels: test-labels    # label file
'''


def write_rgb_dataset(folder, seed=0):
    """600 + 200 colour images whose class is their dominant channel (or grey, or black), as 4-d IDX files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for split, count in (("train", 600), ("test", 200)):
        labels = rng.integers(0, 5, count).astype(np.uint8)
        images = rng.integers(0, 80, (count, 32, 32, 3)).astype(np.uint8)
        for index, label in enumerate(labels):
            if label < 3:
                images[index, ..., label] += 150
            elif label == 3:
                images[index] += 100
        (folder / f"{split}-images.gz").write_bytes(gzip.compress(struct.pack(">IIIII", 0x804, count, 32, 32, 3)
                                                                  + images.tobytes()))
        (folder / f"{split}-labels").write_bytes(struct.pack(">II", 0x801, count) + labels.tobytes())
    return folder


def test_a_dataset_of_another_shape_is_one_yaml_file_through_all_stages_and_serving(tmp_path, store):
    config_dir = tmp_path / "my_conf" / "data"
    config_dir.mkdir(parents=True)
    (config_dir / "shapes5.yaml").write_text(RGB_DATASET.format(folder=write_rgb_dataset(tmp_path / "shapes5")))
    result = run_pipeline([f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "data=shapes5", "model=cnn",
                           "train.epochs=3", "tracking.register_min_accuracy=0.5", *store.overrides, *QUICK_INFER],
                          cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    run = store.only_run()
    metrics = run.data.metrics
    assert run.info.status == "FINISHED" and metrics["eval/accuracy"] > 0.8  # an easy task: chance is 0.2
    assert {f"eval/accuracy_class_{label}" for label in range(5)} <= metrics.keys()
    assert "eval/accuracy_class_5" not in metrics and metrics["infer/agreement"] >= 0.99
    (version,) = store.versions()
    mlflow.set_tracking_uri(store.uri)
    served = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version.version}")
    assert served.metadata.signature.outputs.inputs[0].shape == (-1, 5)
    images = np.random.default_rng(1).random((4, 32, 32, 3), dtype=np.float32)
    assert np.asarray(served.predict(images)).shape == (4, 5)
    # MLflow's signature (from the dataset's shape) refuses the wrong shape before the model's own check.
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"does not match expected shape \(-1, 32, 32, 3\)"):
        served.predict(np.zeros((4, 28, 28, 1), np.float32))


def test_a_users_builder_from_outside_the_package_trains_through_all_stages(tmp_path, store, real_data):
    (tmp_path / "user_models").mkdir()
    (tmp_path / "user_models" / "__init__.py").write_text(USER_MODULE)
    result = run_pipeline([*real_data, "model=custom", "model._target_=user_models.build", "+model.units=16",
                           "precision=mixed_bfloat16", "train.max_steps=60", "tracking.registered_model=null",
                           *store.overrides, *QUICK_INFER], cwd=tmp_path,
                          environment={"PYTHONPATH": f"{tmp_path}:{python_environment()['PYTHONPATH']}"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    run = store.only_run()
    assert run.info.run_name == "custom-mixed_bfloat16-bs128" and run.data.params["model.units"] == "16"
    assert run.data.metrics["infer/agreement"] >= 0.99 and run.data.metrics["eval/accuracy"] > 0.2


def test_a_broken_builder_fails_before_training_in_one_line(tmp_path, store, real_data):
    (tmp_path / "user_models.py").write_text(USER_MODULE.replace('dtype="float32"', 'name="logits"'))
    result = run_pipeline([*real_data, "model=custom", "model._target_=user_models.build", "precision=mixed_float16",
                           *store.overrides], cwd=tmp_path,
                          environment={"PYTHONPATH": f"{tmp_path}:{python_environment()['PYTHONPATH']}"})
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].endswith(
        "ERROR model._target_=user_models.build: its output is float16; give the output layer dtype='float32' "
        "(keras.layers.Dense(num_classes, dtype='float32')): the loss and the served logits need float32 under "
        "mixed precision")
    (run,) = store.runs()
    assert run.info.status == "FAILED" and "train/steps" not in run.data.metrics


def test_the_vit_runs_every_stage_under_each_policy_and_its_served_model_answers(tmp_path, store, real_data):
    result = run_pipeline(["-m", "model=vit", "model.width=16", "model.depth=2",
                           "precision=float32,mixed_float16,mixed_bfloat16", *real_data, "train.max_steps=60",
                           "train.jit_compile=false",  # graph mode: choosing XLA or not is test_autojit's (25 s)
                           "tracking.register_min_accuracy=0.3", *store.overrides, *QUICK_INFER], cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    _, runs = store.sweep()
    assert len(runs) == 3 and all(run.info.status == "FINISHED" for run in runs)
    for run in runs:
        assert run.data.metrics["infer/agreement"] >= 0.99, run.info.run_name  # the export's parity
        assert run.data.metrics["eval/accuracy"] > 0.3, run.info.run_name  # 60 steps; chance is 0.1
    assert len(store.versions()) == 3
    mlflow.set_tracking_uri(store.uri)
    served = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/1")
    assert np.asarray(served.predict(np.zeros((2, 28, 28, 1), np.float32))).shape == (2, 10)
