"""Typed config schemas (registered with Hydra's ConfigStore), their allowed values, and the checks
types cannot express.

The home of every list of choices: the compilation modes, data sources, strategies and stages are
written here once, and the precision policies come from their table in core/precision.py. The YAML
files under conf/ hold the defaults and name their schema in their defaults list, so Hydra rejects a
wrong type or an unknown value while composing. `validate` then checks ranges and combinations.
Both run before TensorFlow is imported, so a bad config fails in about a second.
"""

import dataclasses
import enum
import os
import pathlib

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from pipeline import PipelineError
from pipeline.core import input_checks, precision

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "conf"
STAGES = ("train", "evaluate", "export", "infer")


# Read from the policy table (core/precision.py), so a policy added there is a config value here.
Policy = enum.StrEnum("Policy", [(name, name) for name in precision.POLICIES])


# `same` (the training policy) or any policy.
ServingPolicy = enum.StrEnum("ServingPolicy", ["same", *Policy])


class JitCompile(enum.StrEnum):
    """What XLA compiles: nothing, each optimizer step, or each whole multi-step call; auto: the
    fastest of these for the job, measured (pipeline/training/compile_mode.py)."""

    auto = "auto"
    false = "false"
    step = "step"
    true = "true"


class ExportFormat(enum.StrEnum):
    """What the export stage writes: the SavedModel (always; what `serve` and the unprefixed infer/*
    metrics are), and LiteRT flatbuffers in four precisions."""

    saved_model = "saved_model"
    litert_float32 = "litert_float32"
    litert_float16 = "litert_float16"  # float16 weights, float32 compute
    litert_dynamic_int8 = "litert_dynamic_int8"  # int8 weights, activations quantized on the fly
    litert_int8 = "litert_int8"  # int8 weights and activations, ranges from a calibration set


class DataSource(enum.StrEnum):
    tfds = "tfds"
    idx = "idx"


class Strategy(enum.StrEnum):
    none = "none"
    mirrored = "mirrored"
    multi_worker = "multi_worker"


class Communication(enum.StrEnum):
    auto = "auto"
    ring = "ring"
    nccl = "nccl"


class ConfigError(PipelineError):
    """A config value is out of range or conflicts with another."""


# Defaults live in the YAML files under conf/ (each key commented there), not here.
@dataclasses.dataclass
class PrecisionConfig:
    policy: Policy = MISSING


@dataclasses.dataclass
class SplitConfig:
    name: str = MISSING
    size: int = MISSING
    idx_images: str | None = None
    idx_labels: str | None = None


@dataclasses.dataclass
class DataConfig:
    name: str = MISSING
    source: DataSource = MISSING
    tfds_data_dir: str | None = MISSING
    idx_dir: str | None = MISSING
    batch_size: int = MISSING
    image_shape: list[int] = MISSING
    num_classes: int = MISSING
    class_names: list[str] = MISSING
    train: SplitConfig = MISSING
    test: SplitConfig = MISSING
    validation_size: int | None = None


@dataclasses.dataclass
class ModelConfig:
    """What every model file has: its builder, its name in runs and reports, and the data's shape, which
    each file interpolates from data (the builder is called with both, then with the file's other keys)."""

    _target_: str = MISSING
    name: str = MISSING
    input_shape: list[int] = MISSING
    num_classes: int = MISSING


@dataclasses.dataclass
class MlpConfig(ModelConfig):
    hidden_units: int = MISSING


@dataclasses.dataclass
class VitConfig(ModelConfig):
    patch_size: int = MISSING
    width: int = MISSING
    depth: int = MISSING
    heads: int = MISSING
    mlp_ratio: float = MISSING
    dropout: float = MISSING


@dataclasses.dataclass
class CnnConfig(ModelConfig):
    filters: list[int] = MISSING
    dense_units: int = MISSING


@dataclasses.dataclass
class TrainConfig:
    epochs: int = MISSING
    max_steps: int | None = MISSING
    learning_rate: float = MISSING
    seed: int = MISSING
    # A string, not JitCompile: Hydra parses `train.jit_compile=false` as a boolean. jit_mode() reads it.
    jit_compile: str = MISSING
    steps_per_call: int = MISSING
    log_every_steps: int = MISSING
    deterministic: bool = MISSING
    jit_cache_file: str | None = MISSING
    divergence_factor: float | None = MISSING
    checkpoint_every_steps: int | None = MISSING
    checkpoint_dir: str = MISSING
    resume: str | None = MISSING
    memory_budget_mb: float | None = None
    target_accuracy: float | None = None
    eval_every_steps: int | None = None
    stop_at_target: bool = True


@dataclasses.dataclass
class ExportConfig:
    dir: str = MISSING
    serving_policy: ServingPolicy = MISSING
    formats: list[ExportFormat] = MISSING
    calibration_examples: int = MISSING


@dataclasses.dataclass
class InferConfig:
    latency_runs: int = MISSING
    throughput_batch_size: int = MISSING
    throughput_runs: int = MISSING


@dataclasses.dataclass
class DistributeConfig:
    strategy: Strategy = MISSING
    devices: list[str] | None = None
    logical_cpus: int | None = None
    communication: Communication = Communication.auto


@dataclasses.dataclass
class TrackingConfig:
    uri: str = MISSING
    artifact_root: str | None = MISSING
    experiment: str = MISSING
    registered_model: str | None = MISSING
    register_min_accuracy: float = MISSING
    register_min_agreement: float = MISSING
    register_min_agreement_int8: float = MISSING
    system_metrics: bool = MISSING
    system_metrics_interval: float = MISSING
    patience_s: float = MISSING
    offline_dir: str = MISSING


def register_schemas() -> None:
    """Stores each schema at the root as schema_<name>; each group file extends it with
    `- /schema_<name>@_here_`. Stored inside a group, a schema would be listed (and selectable) as one
    of the group's options."""
    store = ConfigStore.instance()
    for name, node in (
        ("precision", PrecisionConfig),
        ("data", DataConfig),
        ("mlp", MlpConfig),
        ("cnn", CnnConfig),
        ("vit", VitConfig),
        ("train", TrainConfig),
        ("export", ExportConfig),
        ("infer", InferConfig),
        ("distribute", DistributeConfig),
        ("tracking", TrackingConfig),
    ):
        store.store(name=f"schema_{name}", node=node)


def compose(overrides: list[str], config_name: str = "config", return_hydra_config: bool = False) -> DictConfig:
    """The config from conf/ that `python -m pipeline <overrides>` (or another command) would get.

    Outside a Hydra run there is no job output folder: keys that default into it
    (export.dir, train.checkpoint_dir, a report's output_dir) must be set by the overrides.
    """
    with hydra.initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra.compose(config_name=config_name, overrides=overrides, return_hydra_config=return_hydra_config)


def jit_mode(jit_compile) -> JitCompile:
    """train.jit_compile as a JitCompile: the one place its text becomes the enum (validation, and the train
    stage for configs that skipped it); Hydra hands `false` and `true` over as booleans.

    Raises:
        ConfigError: not a mode.
    """
    try:
        return JitCompile(str(jit_compile).lower())
    except ValueError:
        raise ConfigError(f"train.jit_compile={jit_compile!r} is not a mode; use "
                          f"{', '.join(JitCompile)}") from None


def validate(config, in_sweep: bool = False) -> None:
    """Checks ranges and combinations of the composed config; raises ConfigError naming the key.

    Args:
        config: the composed config of `python -m pipeline`.
        in_sweep: the job is one of a -m sweep's (where some settings cannot run).
    """
    for problem in input_checks.problems(config):
        raise ConfigError(problem)
    _require_positive(config, "data.batch_size", "train.epochs", "train.learning_rate", "train.steps_per_call",
                      "train.log_every_steps", "infer.latency_runs", "infer.throughput_batch_size",
                      "infer.throughput_runs")
    if config.get("repeats", 1) < 1:
        raise ConfigError(f"repeats={config.repeats} must be positive")
    for optional_key in ("max_steps", "checkpoint_every_steps", "divergence_factor", "memory_budget_mb",
                         "eval_every_steps"):
        if config.train[optional_key] is not None:
            _require_positive(config, f"train.{optional_key}")
    _check_data_shape(config.data)
    _check_target(config)
    train_size = config.data.train.size - (config.data.get("validation_size") or 0)
    if config.data.batch_size > train_size:
        raise ConfigError(f"data.batch_size={config.data.batch_size} exceeds the {train_size} training examples "
                          f"of {config.data.name}; use at most {train_size}")
    if config.data.source == DataSource.idx and not config.data.idx_dir:
        raise ConfigError("data.source=idx needs data.idx_dir=<folder with the 4 IDX files>")
    jit_compile = jit_mode(config.train.jit_compile)
    if ExportFormat.saved_model not in list(config.export.formats):
        raise ConfigError(f"export.formats={list(map(str, config.export.formats))} must include saved_model: the "
                          "served model and the source of the LiteRT conversions; add it to the list")
    _require_positive(config, "export.calibration_examples")
    _require_positive(config, "tracking.system_metrics_interval")
    if config.tracking.patience_s < 0:
        raise ConfigError(f"tracking.patience_s={config.tracking.patience_s} must be 0 or more seconds")
    for key in ("register_min_accuracy", "register_min_agreement", "register_min_agreement_int8"):
        if not 0 <= config.tracking[key] <= 1:
            raise ConfigError(f"tracking.{key}={config.tracking[key]} must be between 0 and 1")
    stages = list(config.stages)
    if not stages or stages != list(STAGES[: len(stages)]):
        raise ConfigError(f"stages={stages} is not a run of stages; use a prefix of [{', '.join(STAGES)}] "
                          "(each stage needs the ones before it)")
    _validate_distribute(config, jit_compile, in_sweep)


def validate_command(config) -> None:
    """The checks of `validate` that concern a command's own config (report, promote, infer_model).

    Raises:
        ConfigError: the first bad name, URI or path, naming the key and the fix.
    """
    for problem in input_checks.command_problems(config):
        raise ConfigError(problem)


def _validate_distribute(config, jit_compile: JitCompile, in_sweep: bool) -> None:
    strategy = config.distribute.strategy
    if strategy == Strategy.none:
        return
    if jit_compile == JitCompile.true:
        raise ConfigError(f"train.jit_compile=true compiles whole calls, which cannot hold distribute={strategy}'s "
                          "cross-replica gradient sum; use train.jit_compile=step or false")
    logical_cpus = config.distribute.logical_cpus
    if logical_cpus is not None and logical_cpus < 2:
        raise ConfigError(f"distribute.logical_cpus={logical_cpus} must be at least 2 (or null)")
    if strategy != Strategy.multi_worker:
        return
    if in_sweep:
        raise ConfigError("distribute=multi_worker runs one job across the cluster's processes; "
                          "start it without -m (one command per worker)")
    if not os.environ.get("TF_CONFIG"):
        raise ConfigError("distribute=multi_worker needs the TF_CONFIG environment variable describing the cluster "
                          "(see the README's multi-worker section); use distribute=none for one process")
    if config.train.resume:
        raise ConfigError(f"train.resume={config.train.resume} is not supported with distribute=multi_worker "
                          "(workers keep no checkpoints of their own); rerun the job from the start")


def _check_data_shape(data_config) -> None:
    """What conf/data/<name>.yaml says of its images and classes must hold together."""
    shape = list(data_config.image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"data.image_shape={shape} must be 3 positive ints: [height, width, channels]")
    if data_config.num_classes < 2:
        raise ConfigError(f"data.num_classes={data_config.num_classes} must be at least 2")
    if len(data_config.class_names) != data_config.num_classes:
        raise ConfigError(f"data.class_names has {len(data_config.class_names)} names for data.num_classes="
                          f"{data_config.num_classes}; give one name per class")
    for split in ("train", "test"):
        if data_config[split].size < 1:
            raise ConfigError(f"data.{split}.size={data_config[split].size} must be positive: the split's examples")


def _check_target(config) -> None:
    target = config.train.get("target_accuracy")
    if target is not None and not 0 < target <= 1:
        raise ConfigError(f"train.target_accuracy={target} must be in (0, 1], a share of the evaluation split right; "
                          "or null to train the whole budget")
    validation_size = config.data.get("validation_size")
    if validation_size is not None and not 0 < validation_size < config.data.train.size:
        raise ConfigError(f"data.validation_size={validation_size} must be between 1 and {config.data.train.size - 1} "
                          f"(the training split's {config.data.train.size} examples less one), or null to evaluate "
                          "during training on the test split")


def _require_positive(config, *keys: str) -> None:
    for key in keys:
        section, name = key.split(".")
        value = config[section][name]
        if value <= 0:
            raise ConfigError(f"{key}={value} must be positive")


register_schemas()
