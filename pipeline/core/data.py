"""The data: image classification splits from TFDS or from a folder of IDX files, and the tf.data pipeline.

What a dataset is (its image shape, classes, split names and sizes) is read from its conf/data YAML
file, never assumed here: another image dataset is one such file.
"""

import dataclasses
import functools
import gzip
import hashlib
import pathlib
import socket
import struct
import typing
import urllib.parse

import numpy as np

from pipeline import PipelineError

if typing.TYPE_CHECKING:  # the served model imports this module; it needs no Hydra
    from pipeline.core.config import DataConfig

# The names of the original MNIST release's IDX files (Fashion-MNIST's too): read_idx_split's default.
MNIST_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX magic numbers of unsigned bytes: labels (1 dimension), grey images (3: count, rows, columns) and
# images with channels (4: count, rows, columns, channels).
_IDX_MAGIC = {"labels": (0x00000801,), "images": (0x00000803, 0x00000804)}


class DataError(PipelineError):
    """The dataset is missing, unreachable or malformed; the message says how to fix it."""


@dataclasses.dataclass
class Split:
    """One split in memory: uint8 images (N, height, width, channels) and int64 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    @functools.cached_property
    def digest(self) -> str:
        """A fingerprint of the images and labels: runs on different data never compare by mistake.

        Kept with the split, which a sweep's jobs share (load_datasets): hashed once per process, and
        from the arrays' own memory, without copying 47 MB.
        """
        fingerprint = hashlib.sha256(np.ascontiguousarray(self.images))
        fingerprint.update(np.ascontiguousarray(self.labels, dtype=np.int64))
        return fingerprint.hexdigest()[:16]


@dataclasses.dataclass
class Datasets:
    """What the other stages need: the raw splits, the batch size and the classes.

    Training reads `train` directly: it fits on any device, so it is held there as one tensor.
    Evaluation makes its tf.data pipeline when it runs (make_batches), so no test tensors sit in the
    allocator while training is measured.
    """

    train: Split
    test: Split
    batch_size: int
    num_classes: int
    class_names: list[str] | None = None  # None: the labels' numbers
    name: str = "unnamed"  # data.name
    source: str = ""  # where the splits were read: the IDX folder, or TFDS's prepared <data_dir>/<name>/<version>
    validation: Split | None = None  # data.validation_size examples held out of train: evaluations during training

    @property
    def during_training(self) -> tuple[str, Split]:
        """The split that evaluations during training read, and its name: the validation split where one
        is held out, the test split otherwise (as MLPerf evaluates)."""
        return ("validation", self.validation) if self.validation is not None else ("test", self.test)


VALIDATION_SEED = 0  # one draw of the validation examples for every job: seeds then differ in training alone
_last_read: dict[tuple, tuple[dict[str, Split], str]] = {}  # the splits read last in this process, by where from


def load_datasets(data_config: "DataConfig") -> Datasets:
    """Loads both splits from the configured source and checks the batch size fits.

    The splits read last are kept: the jobs of a sweep in one process read the dataset once (about
    a second saved per job), and memory holds one dataset however many jobs run.
    """
    key = (str(data_config.source), data_config.name, data_config.tfds_data_dir, data_config.idx_dir,
           *(tuple(data_config[split].values()) for split in ("train", "test")))
    if key not in _last_read:
        _last_read.clear()
        _last_read[key] = _read_splits(data_config)
    splits, source = _last_read[key]
    train, test = splits["train"], splits["test"]
    for name, split in splits.items():
        if not len(split.labels):
            raise DataError(f"data.name={data_config.name} from {source}: the {name} split holds no examples; point "
                            "data.tfds_data_dir (or data.idx_dir) at a prepared copy of the dataset")
        _check_split(split, name, data_config, source)
    validation = None
    if data_config.get("validation_size"):
        train, validation = hold_out(train, data_config.validation_size)
    if data_config.batch_size > len(train.labels):
        raise DataError(
            f"data.batch_size={data_config.batch_size} exceeds the {len(train.labels)} training examples; "
            "pass a smaller data.batch_size"
        )
    return Datasets(
        train=train,
        test=test,
        batch_size=data_config.batch_size,
        num_classes=data_config.num_classes,
        class_names=list(data_config.class_names),
        name=data_config.name,
        source=source,
        validation=validation,
    )


def hold_out(split: Split, count: int) -> tuple[Split, Split]:
    """`count` examples drawn from `split` (the same ones every time), and the rest in their order.

    Raises:
        DataError: the split has no more than `count` examples.
    """
    if not 0 < count < len(split.labels):
        raise DataError(f"data.validation_size={count} must be less than the {len(split.labels)} training examples "
                        "read; pass a smaller data.validation_size")
    drawn = np.random.default_rng(VALIDATION_SEED).permutation(len(split.labels))
    held, kept = drawn[:count], np.sort(drawn[count:])
    return Split(split.images[kept], split.labels[kept]), Split(split.images[held], split.labels[held])


def _check_split(split: Split, name: str, data_config: "DataConfig", source: str) -> None:
    """The split's images and labels must be what the data config says: the model is built from it."""
    expected = tuple(data_config.image_shape)
    if split.images.shape[1:] != expected:
        raise DataError(f"data.name={data_config.name} from {source}: {name} images are {split.images.shape[1:]}, "
                        f"data.image_shape says {list(expected)}; set data.image_shape to the images' shape")
    if split.labels.size and not 0 <= split.labels.min() <= split.labels.max() < data_config.num_classes:
        raise DataError(f"data.name={data_config.name} from {source}: {name} labels span {split.labels.min()}.."
                        f"{split.labels.max()}, outside 0..{data_config.num_classes - 1} (data.num_classes="
                        f"{data_config.num_classes}); set data.num_classes and data.class_names to the dataset's")


def _read_splits(data_config: "DataConfig") -> tuple[dict[str, Split], str]:
    if data_config.source == "tfds":
        return _read_tfds(data_config.name, data_config.tfds_data_dir,
                          {split: data_config[split].name for split in ("train", "test")})
    if data_config.source == "idx":
        if not data_config.idx_dir:
            raise DataError("data.idx_dir is not set; pass data.idx_dir=<folder with the 4 IDX files>")
        splits = {split: read_idx_split(data_config.idx_dir, split, (data_config[split].idx_images,
                                                                     data_config[split].idx_labels))
                  for split in ("train", "test")}
        return splits, str(pathlib.Path(data_config.idx_dir).resolve())
    raise DataError(f"data.source={data_config.source!r} is not a source; use tfds or idx")


def make_batches(split: Split, batch_size: int):
    """Batches in order, normalizes to float32 in [0, 1] and prefetches (evaluation's pipeline)."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((split.images, split.labels)).batch(batch_size)
    dataset = dataset.map(lambda images, labels: (normalize(images), labels), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def normalize(images):
    """uint8 pixels to float32 in [0, 1]; float32 whatever the policy, so inputs are exact."""
    import tensorflow as tf

    return tf.cast(images, tf.float32) / 255.0


def read_idx_split(folder, split: str, files: tuple[str | None, str | None] | None = None) -> Split:
    """Reads one split's image and label IDX files (gzipped or not) and checks they agree.

    Args:
        folder: the folder holding the files.
        split: train or test: names the files when `files` does not.
        files: the image and label files' names (without .gz); MNIST's own names where None.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise DataError(
            f"data.idx_dir={str(folder)!r} is not a folder; for Fashion-MNIST run "
            "`apt-get install -y dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist)"
        )
    image_stem, label_stem = [given or default for given, default in zip(files or (None, None), MNIST_IDX_FILES[split])]
    images = read_idx(_find_idx_file(folder, image_stem), kind="images")
    labels = read_idx(_find_idx_file(folder, label_stem), kind="labels")
    if len(images) != len(labels):
        raise DataError(f"{folder}: {split} split has {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise DataError(f"{folder}: the {split} split holds no images (its IDX header counts 0); point data.idx_dir "
                        "at a folder of the dataset's four files")
    if images.ndim == 3:  # grey images: one channel
        images = images[..., None]
    return Split(images=images, labels=labels.astype(np.int64))


def read_idx(path: pathlib.Path, kind: str) -> np.ndarray:
    """Parses one IDX file of unsigned bytes, validating its magic number, shape and size."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot read ({error}); re-download or reinstall the file") from error
    if len(raw) < 8:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic not in _IDX_MAGIC[kind]:
        expected = " or ".join(f"{number:#010x}" for number in _IDX_MAGIC[kind])
        raise DataError(f"{path}: magic number {magic:#010x} is not IDX {kind} ({expected})")
    dimensions = magic & 0xFF
    header_size = 4 + 4 * dimensions
    if len(raw) < header_size:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header of {dimensions} dimensions")
    shape = struct.unpack(f">{dimensions}I", raw[4:header_size])
    expected_size = header_size + int(np.prod(shape))
    if len(raw) != expected_size:
        raise DataError(f"{path}: {len(raw)} bytes, header promises {expected_size} (truncated or corrupt)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def _find_idx_file(folder: pathlib.Path, stem: str) -> pathlib.Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.exists():
            return candidate
    raise DataError(f"{folder}: missing {stem} (or {stem}.gz)")


def _read_tfds(name: str, data_dir: str | None, split_names: dict[str, str]) -> tuple[dict[str, Split], str]:
    import tensorflow_datasets as tfds

    load_arguments = dict(split=list(split_names.values()), data_dir=data_dir, as_supervised=True)
    try:
        arrays = tfds.load(name, download=False, **load_arguments)
    except AssertionError:  # TFDS's way of saying the dataset is not prepared in data_dir yet
        _check_downloadable(tfds.builder(name, data_dir=data_dir))
        arrays = tfds.load(name, **load_arguments)
    splits = {split: _to_split(dataset) for split, dataset in zip(split_names, arrays)}
    return splits, str(tfds.builder(name, data_dir=data_dir).data_dir)  # <data_dir>/<name>/<version>


def _to_split(dataset) -> Split:
    # Chunks of 10k rather than TFDS's batch_size=-1, which aborts the process under mock_data.
    chunks = list(dataset.batch(10_000).as_numpy_iterator())
    if not chunks:  # an empty split: load_datasets names it
        return Split(images=np.zeros((0, 1, 1, 1), np.uint8), labels=np.zeros(0, np.int64))
    images = np.concatenate([images for images, _ in chunks]).astype(np.uint8)
    if images.ndim == 3:  # a TFDS dataset of grey images without a channel axis
        images = images[..., None]
    labels = np.concatenate([labels for _, labels in chunks]).astype(np.int64)
    return Split(images=images, labels=labels)


def _check_downloadable(builder) -> None:
    """Fails in seconds when TFDS could neither find manual files nor reach the download host.

    Offline, TFDS would otherwise retry its download for minutes before giving up.
    """
    manual_dir = pathlib.Path(builder.data_dir_root) / "downloads" / "manual"
    file_names = [f"{stem}.gz" for stems in MNIST_IDX_FILES.values() for stem in stems]
    if all((manual_dir / file_name).exists() for file_name in file_names):
        return
    url = urllib.parse.urlparse(getattr(builder, "URL", "https://storage.googleapis.com"))
    if _host_reachable(url.hostname, url.port or (443 if url.scheme == "https" else 80)):
        return
    raise DataError(
        f"{builder.name} is not prepared in {builder.data_dir_root} and {url.hostname} is unreachable (offline?). "
        f"Put its 4 original files ({', '.join(file_names)}) in {manual_dir}, or train on real images offline: "
        "apt-get install -y dataset-fashion-mnist && python -m pipeline data=fashion_mnist data.source=idx"
    )


def _host_reachable(host: str, port: int, timeout_s: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
