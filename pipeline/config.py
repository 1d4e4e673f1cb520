"""Typed config schemas (registered with Hydra's ConfigStore) and the checks types cannot express.

Each YAML group file names its schema in its defaults list, so Hydra rejects a wrong type or an
unknown enum value while composing; `validate` then checks ranges and combinations. Both run
before TensorFlow is imported, so a bad config fails in about a second.
"""

import dataclasses
import enum
import os

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from pipeline import PipelineError

# Examples in each split, for checking batch sizes before any data is read.
SPLIT_SIZES = {"mnist": {"train": 60000, "test": 10000}, "fashion_mnist": {"train": 60000, "test": 10000}}
STAGES = ("train", "evaluate", "export", "infer")


class Policy(enum.StrEnum):
    float32 = "float32"
    mixed_float16 = "mixed_float16"
    mixed_bfloat16 = "mixed_bfloat16"


class ServingPolicy(enum.StrEnum):
    same = "same"
    float32 = "float32"
    mixed_float16 = "mixed_float16"
    mixed_bfloat16 = "mixed_bfloat16"


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


@dataclasses.dataclass
class PrecisionConfig:
    policy: Policy = MISSING


@dataclasses.dataclass
class DataConfig:
    name: str = MISSING
    source: DataSource = DataSource.tfds
    tfds_data_dir: str | None = None
    idx_dir: str | None = None
    batch_size: int = 128


@dataclasses.dataclass
class MlpConfig:
    _target_: str = "pipeline.model.build_mlp"
    name: str = "mlp"
    hidden_units: int = 128


@dataclasses.dataclass
class CnnConfig:
    _target_: str = "pipeline.model.build_cnn"
    name: str = "cnn"
    filters: list[int] = dataclasses.field(default_factory=lambda: [32, 64])
    dense_units: int = 128


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 1
    max_steps: int | None = None
    learning_rate: float = 0.001
    seed: int = 0
    jit_compile: str = "step"
    steps_per_call: int = 50
    log_every_steps: int = 10
    deterministic: bool = False
    checkpoint_every_steps: int | None = None
    checkpoint_dir: str = MISSING
    resume: str | None = None


@dataclasses.dataclass
class ExportConfig:
    dir: str = MISSING
    serving_policy: ServingPolicy = ServingPolicy.same


@dataclasses.dataclass
class InferConfig:
    latency_runs: int = 200
    throughput_batch_size: int = 1024
    throughput_runs: int = 20


@dataclasses.dataclass
class DistributeConfig:
    strategy: Strategy = Strategy.none
    devices: list[str] | None = None
    logical_cpus: int | None = None
    communication: Communication = Communication.auto


@dataclasses.dataclass
class TrackingConfig:
    uri: str = MISSING
    artifact_root: str | None = None
    experiment: str = MISSING
    registered_model: str | None = None


def register_schemas() -> None:
    store = ConfigStore.instance()
    for group, name, node in (
        ("precision", "base_precision", PrecisionConfig),
        ("data", "base_data", DataConfig),
        ("model", "base_mlp", MlpConfig),
        ("model", "base_cnn", CnnConfig),
        ("train", "base_train", TrainConfig),
        ("export", "base_export", ExportConfig),
        ("infer", "base_infer", InferConfig),
        ("distribute", "base_distribute", DistributeConfig),
        ("tracking", "base_tracking", TrackingConfig),
    ):
        store.store(group=group, name=name, node=node)


def validate(config) -> None:
    """Checks ranges and combinations of the composed config; raises ConfigError naming the key."""
    _require_positive(config, "data.batch_size", "train.epochs", "train.learning_rate", "train.steps_per_call",
                      "train.log_every_steps", "infer.latency_runs", "infer.throughput_batch_size",
                      "infer.throughput_runs")
    for optional_key in ("max_steps", "checkpoint_every_steps"):
        if config.train[optional_key] is not None:
            _require_positive(config, f"train.{optional_key}")
    train_size = SPLIT_SIZES.get(config.data.name, {}).get("train")
    if train_size and config.data.batch_size > train_size:
        raise ConfigError(f"data.batch_size={config.data.batch_size} exceeds the {train_size} training examples "
                          f"of {config.data.name}; use at most {train_size}")
    if config.data.source == DataSource.idx and not config.data.idx_dir:
        raise ConfigError("data.source=idx needs data.idx_dir=<folder with the 4 IDX files>")
    if str(config.train.jit_compile).lower() not in ("false", "step", "true"):
        raise ConfigError(f"train.jit_compile={config.train.jit_compile!r} is not a mode; use false, step or true")
    stages = list(config.stages)
    if not stages or stages != list(STAGES[: len(stages)]):
        raise ConfigError(f"stages={stages} is not a run of stages; use a prefix of [{', '.join(STAGES)}] "
                          "(each stage needs the ones before it)")
    _validate_distribute(config)
    if config.data.name not in SPLIT_SIZES:
        raise ConfigError(f"data.name={config.data.name!r} is not a dataset; use one of {', '.join(SPLIT_SIZES)}")


def _validate_distribute(config) -> None:
    strategy = config.distribute.strategy
    if strategy == Strategy.none:
        return
    if str(config.train.jit_compile).lower() == "true":
        raise ConfigError(f"train.jit_compile=true compiles whole calls, which cannot hold distribute={strategy}'s "
                          "cross-replica gradient sum; use train.jit_compile=step or false")
    logical_cpus = config.distribute.logical_cpus
    if logical_cpus is not None and logical_cpus < 2:
        raise ConfigError(f"distribute.logical_cpus={logical_cpus} must be at least 2 (or null)")
    if strategy == Strategy.multi_worker and not os.environ.get("TF_CONFIG"):
        raise ConfigError("distribute=multi_worker needs the TF_CONFIG environment variable describing the cluster "
                          "(see the README's multi-worker section); use distribute=none for one process")
    if strategy == Strategy.multi_worker and config.train.resume:
        raise ConfigError(f"train.resume={config.train.resume} is not supported with distribute=multi_worker "
                          "(workers keep no checkpoints of their own); rerun the job from the start")


def _require_positive(config, *keys: str) -> None:
    for key in keys:
        section, name = key.split(".")
        value = config[section][name]
        if value <= 0:
            raise ConfigError(f"{key}={value} must be positive")


register_schemas()
