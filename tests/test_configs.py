"""Every config option composes, every YAML key documents its allowed values."""

import pathlib

import pytest

from pipeline.core import config
from pipeline.core.config import CONFIG_DIR

GROUPS = {
    group.name: sorted(option.stem for option in group.glob("*.yaml"))
    for group in CONFIG_DIR.iterdir()
    if group.is_dir()
}


def test_expected_options_exist():
    # One home per fact: the option files are the schema's enum values.
    assert GROUPS["precision"] == sorted(config.Policy)
    assert GROUPS["distribute"] == sorted(config.Strategy)
    assert GROUPS["data"] == ["fashion_mnist", "mnist"]
    assert GROUPS["model"] == ["cnn", "custom", "mlp", "vit"]


@pytest.mark.parametrize("group,option", [(group, option) for group, options in GROUPS.items() for option in options])
def test_every_option_composes(compose, group, option):
    composed = compose([f"{group}={option}"])
    assert group in composed or group == "hparams_search"  # a search config edits hydra's own node
    if group in ("precision", "data", "model", "distribute"):
        # The file's own name key must agree with the file it is in.
        key = {"precision": "policy", "distribute": "strategy"}.get(group, "name")
        assert composed[group][key].split("-")[0] == option  # a ViT's name carries its size: vit-w64-d4


def test_public_overrides_apply(compose):
    composed = compose([
        "precision=mixed_bfloat16", "model=cnn", "data=fashion_mnist", "data.batch_size=64",
        "data.source=idx", "data.idx_dir=/somewhere", "train.epochs=3", "train.max_steps=7",
        "tracking.uri=sqlite:///x.db", "tracking.experiment=exp",
    ])
    assert composed.precision.policy == "mixed_bfloat16"
    assert composed.model.name == "cnn"
    assert (composed.data.name, composed.data.batch_size, composed.data.source, composed.data.idx_dir) == (
        "fashion_mnist", 64, "idx", "/somewhere")
    assert (composed.train.epochs, composed.train.max_steps) == (3, 7)
    assert (composed.tracking.uri, composed.tracking.experiment) == ("sqlite:///x.db", "exp")


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("*.yaml")), ids=lambda path: str(path.relative_to(CONFIG_DIR)))
def test_every_key_is_commented(path: pathlib.Path):
    lines = path.read_text().splitlines()
    uncommented = [
        line for previous, line in zip(["#", *lines], lines)
        if ":" in line and not line.lstrip().startswith(("#", "-")) and "#" not in line
        and not line.rstrip().endswith(":")  # a mapping's header; its keys carry the comments
        and not previous.lstrip().startswith("#")  # commented on the line above
    ]
    assert not uncommented, f"keys without a comment in {path}: {uncommented}"
