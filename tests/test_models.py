"""Models from a builder: the built-ins, the ViT (and its float16 numerics), a user's own builder, and
one clear line for each way a builder can be wrong."""

import sys

import keras
import numpy as np
import pytest

from pipeline.core import data, model
from pipeline.stages import train

BROKEN_BUILDERS = '''
import keras


def _body(input_shape, width=8):
    inputs = keras.Input(shape=input_shape)
    return inputs, keras.layers.Dense(width, activation="relu")(keras.layers.Flatten()(inputs))


def float16_output(input_shape, num_classes):
    inputs, hidden = _body(input_shape)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(hidden))  # the policy's float16: the common mistake


def wrong_width(input_shape, num_classes):
    inputs, hidden = _body(input_shape)
    return keras.Model(inputs, keras.layers.Dense(num_classes + 1, dtype="float32")(hidden))


def wrong_input(input_shape, num_classes):
    inputs, hidden = _body((32, 32, 3))
    return keras.Model(inputs, keras.layers.Dense(num_classes, dtype="float32")(hidden))


def not_a_model(input_shape, num_classes):
    return [keras.layers.Dense(num_classes)]


def no_num_classes(input_shape):
    return None


def good(input_shape, num_classes, units=16):
    inputs, hidden = _body(input_shape, units)
    return keras.Model(inputs, keras.layers.Dense(num_classes, dtype="float32")(hidden))
'''



@pytest.fixture


def builders(tmp_path, monkeypatch):
    """A user's module of builders, importable as user_builders (outside the package)."""
    (tmp_path / "user_builders.py").write_text(BROKEN_BUILDERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("user_builders", None)


@pytest.mark.parametrize("target,message", [
    ("user_builders.float16_output", r"its output is float16; give the output layer dtype='float32' "
                                     r"\(keras.layers.Dense\(num_classes, dtype='float32'\)\)"),
    ("user_builders.wrong_width", r"its output is \(None, 11\), expected \(batch, 10\) logits \(data.num_classes\)"),
    ("user_builders.wrong_input", r"its input is \(32, 32, 3\), the data's images are \(28, 28, 1\); build "
                                  r"keras.Input\(shape=input_shape\)"),
    ("user_builders.not_a_model", r"returned a list, not a keras.Model"),
    ("user_builders.no_num_classes", r"no_num_classes\(\) got an unexpected keyword argument 'num_classes'; it is "
                                     r"called as "
                                     r"build\(input_shape=..., num_classes=..., \*\*the other keys under model.\)"),
    ("user_builders.missing", r"cannot import it .*; give an importable function such as my_package.models.build"),
    ("no_such_package.build", r"cannot import it \(No module named 'no_such_package'\)"),
])


def test_each_broken_builder_gets_one_line_saying_what_to_fix(compose, builders, target, message):
    config = compose(["model=custom", f"model._target_={target}", "precision=mixed_float16"])
    with pytest.raises(model.ModelError, match=f"^model._target_={target}: {message}") as error:
        model.build_model(config.model, "mixed_float16", seed=0)
    assert "\n" not in str(error.value)


def test_a_users_builder_gets_the_data_shape_and_its_own_keys(compose, builders):
    config = compose(["model=custom", "model._target_=user_builders.good", "+model.units=24",
                      "precision=mixed_bfloat16"])
    built = model.build_model(config.model, "mixed_bfloat16", seed=0)
    assert built.input_shape == (None, 28, 28, 1) and built.output_shape == (None, 10)
    assert built.layers[2].units == 24 and built.layers[2].compute_dtype == "bfloat16"  # the policy was set first


@pytest.mark.parametrize("name", ["mlp", "cnn", "vit"])


def test_built_in_models_follow_the_same_contract_for_another_image_shape(compose, name):
    config = compose([f"model={name}", "data.image_shape=[32,32,3]", "data.num_classes=5",
                      "data.class_names=[a,b,c,d,e]", *(["model.patch_size=4"] if name == "vit" else [])])
    built = model.build_model(config.model, "mixed_float16", seed=0)
    assert built.input_shape == (None, 32, 32, 3) and built.output_shape == (None, 5)
    assert built.output.dtype == "float32"


def test_a_vit_size_is_one_override_and_names_its_rows(compose):
    sizes = {}
    for width in (32, 64):
        config = compose(["model=vit", f"model.width={width}"])
        sizes[config.model.name] = model.build_model(config.model, "float32", seed=0).count_params()
    assert list(sizes) == ["vit-w32-d4", "vit-w64-d4"] and sizes["vit-w64-d4"] > 3 * sizes["vit-w32-d4"]
    with pytest.raises(model.ModelError, match=r"model.patch_size=5 must divide the images' 28x28"):
        model.build_model(compose(["model=vit", "model.patch_size=5"]).model, "float32", seed=0)


def learnable_split(count: int = 512) -> data.Split:
    """Images whose label is where a bright square sits (one of 10 places on a 28x28 grid), over noise."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, count)
    images = rng.integers(0, 60, (count, 28, 28, 1), dtype=np.uint8)
    for index, label in enumerate(labels):
        row, column = divmod(int(label), 5)
        images[index, 4 + row * 12:12 + row * 12, column * 5 + 1:column * 5 + 5] = 255
    return data.Split(images=images, labels=labels.astype(np.int64))


def test_the_vit_trains_under_float16_with_loss_scaling_and_stable_numerics(compose):
    """Loss falls, and overflowing steps are the loss scale finding its level, not a run that never steps."""
    config = compose(["model=vit", "model.width=32", "model.depth=2", "train.epochs=8", "train.steps_per_call=4",
                      "train.log_every_steps=4"])
    split = learnable_split()
    recorded = []
    result = train.train(model.build_model(config.model, "mixed_float16", seed=0),
                         data.Datasets(split, split, 32, num_classes=10), config.train, "mixed_float16",
                         log_metric=lambda name, points: recorded.extend(points))
    losses = [loss for _, loss in sorted(recorded)]
    assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses
    assert result.skipped_steps < result.steps / 4 and result.loss_scale >= 1
    layer_norms = [layer for layer in result.model.layers if isinstance(layer, keras.layers.LayerNormalization)]
    assert layer_norms and all(layer.compute_dtype == "float16" for layer in layer_norms)  # Keras normalizes in float32
