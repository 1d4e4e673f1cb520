"""The data: MNIST-style splits from TFDS or from a folder of IDX files, and the tf.data pipeline."""

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

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}


class DataError(PipelineError):
    """The dataset is missing, unreachable or malformed; the message says how to fix it."""


@dataclasses.dataclass
class Split:
    """One split in memory: uint8 images (N, 28, 28, 1) and int64 labels (N,)."""

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
    """What the other stages need: the raw splits, the batch size, the test split's tf.data pipeline.

    Training reads `train` directly: it fits on any device, so it is held there as one tensor.
    """

    train: Split
    test: Split
    batch_size: int
    test_batches: object  # tf.data.Dataset of (float32 images, int64 labels)
    name: str = "unnamed"  # data.name
    source: str = ""  # where the splits were read: the IDX folder, or TFDS's prepared <data_dir>/<name>/<version>


_last_read: dict[tuple, tuple[dict[str, Split], str]] = {}  # the splits read last in this process, by where from


def load_datasets(data_config: "DataConfig") -> Datasets:
    """Loads both splits from the configured source and checks the batch size fits.

    The splits read last are kept: the jobs of a sweep in one process read the dataset once (about
    a second saved per job), and memory holds one dataset however many jobs run.
    """
    key = (str(data_config.source), data_config.name, data_config.tfds_data_dir, data_config.idx_dir)
    if key not in _last_read:
        _last_read.clear()
        _last_read[key] = _read_splits(data_config)
    splits, source = _last_read[key]
    train, test = splits["train"], splits["test"]
    for name, split in splits.items():
        if not len(split.labels):
            raise DataError(f"data.name={data_config.name} from {source}: the {name} split holds no examples; point "
                            "data.tfds_data_dir (or data.idx_dir) at a prepared copy of the dataset")
    if data_config.batch_size > len(train.labels):
        raise DataError(
            f"data.batch_size={data_config.batch_size} exceeds the {len(train.labels)} training examples; "
            "pass a smaller data.batch_size"
        )
    return Datasets(
        train=train,
        test=test,
        batch_size=data_config.batch_size,
        test_batches=make_batches(test, data_config.batch_size),
        name=data_config.name,
        source=source,
    )


def _read_splits(data_config: "DataConfig") -> tuple[dict[str, Split], str]:
    if data_config.source == "tfds":
        return _read_tfds(data_config.name, data_config.tfds_data_dir)
    if data_config.source == "idx":
        if not data_config.idx_dir:
            raise DataError("data.idx_dir is not set; pass data.idx_dir=<folder with the 4 IDX files>")
        splits = {split: read_idx_split(data_config.idx_dir, split) for split in SPLIT_FILES}
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


def read_idx_split(folder, split: str) -> Split:
    """Reads one split's image and label IDX files (gzipped or not) and checks they agree."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise DataError(
            f"data.idx_dir={str(folder)!r} is not a folder; for Fashion-MNIST run "
            "`apt-get install -y dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist)"
        )
    image_stem, label_stem = SPLIT_FILES[split]
    images = read_idx(_find_idx_file(folder, image_stem), kind="images")
    labels = read_idx(_find_idx_file(folder, label_stem), kind="labels")
    if len(images) != len(labels):
        raise DataError(f"{folder}: {split} split has {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise DataError(f"{folder}: the {split} split holds no images (its IDX header counts 0); point data.idx_dir "
                        "at a folder of the dataset's four files")
    return Split(images=images.reshape((-1, *IMAGE_SHAPE)), labels=labels.astype(np.int64))


def read_idx(path: pathlib.Path, kind: str) -> np.ndarray:
    """Parses one IDX file, validating magic number, shape, size and (for labels) the value range."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot read ({error}); re-download or reinstall the file") from error
    if len(raw) < 8:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    magic, count = struct.unpack(">II", raw[:8])
    if magic != _IDX_MAGIC[kind]:
        raise DataError(f"{path}: magic number {magic:#010x} is not IDX {kind} ({_IDX_MAGIC[kind]:#010x})")
    header_size, shape = 8, (count,)
    if kind == "images":
        rows, columns = struct.unpack(">II", raw[8:16])
        header_size, shape = 16, (count, rows, columns)
        if (rows, columns) != IMAGE_SHAPE[:2]:
            raise DataError(f"{path}: images are {rows}x{columns}, expected 28x28")
    expected_size = header_size + int(np.prod(shape))
    if len(raw) != expected_size:
        raise DataError(f"{path}: {len(raw)} bytes, header promises {expected_size} (truncated or corrupt)")
    values = np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)
    if kind == "labels" and values.size and values.max() >= NUM_CLASSES:
        raise DataError(f"{path}: label {values.max()} is out of range 0..{NUM_CLASSES - 1}")
    return values


def _find_idx_file(folder: pathlib.Path, stem: str) -> pathlib.Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.exists():
            return candidate
    raise DataError(f"{folder}: missing {stem} (or {stem}.gz)")


def _read_tfds(name: str, data_dir: str | None) -> tuple[dict[str, Split], str]:
    import tensorflow_datasets as tfds

    load_arguments = dict(split=list(SPLIT_FILES), data_dir=data_dir, as_supervised=True)
    try:
        arrays = tfds.load(name, download=False, **load_arguments)
    except AssertionError:  # TFDS's way of saying the dataset is not prepared in data_dir yet
        _check_downloadable(tfds.builder(name, data_dir=data_dir))
        arrays = tfds.load(name, **load_arguments)
    splits = {split: _to_split(dataset) for split, dataset in zip(SPLIT_FILES, arrays)}
    return splits, str(tfds.builder(name, data_dir=data_dir).data_dir)  # <data_dir>/<name>/<version>


def _to_split(dataset) -> Split:
    # Chunks of 10k rather than TFDS's batch_size=-1, which aborts the process under mock_data.
    chunks = list(dataset.batch(10_000).as_numpy_iterator())
    if not chunks:  # an empty split: load_datasets names it
        return Split(images=np.zeros((0, *IMAGE_SHAPE), np.uint8), labels=np.zeros(0, np.int64))
    images = np.concatenate([images for images, _ in chunks]).astype(np.uint8)
    labels = np.concatenate([labels for _, labels in chunks]).astype(np.int64)
    return Split(images=images, labels=labels)


def _check_downloadable(builder) -> None:
    """Fails in seconds when TFDS could neither find manual files nor reach the download host.

    Offline, TFDS would otherwise retry its download for minutes before giving up.
    """
    manual_dir = pathlib.Path(builder.data_dir_root) / "downloads" / "manual"
    file_names = [f"{stem}.gz" for stems in SPLIT_FILES.values() for stem in stems]
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
