"""IDX reader on good and broken files, the real TFDS code path under mock_data, real Fashion-MNIST."""

import gzip
import socket
import struct
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from pipeline.core import data


def write_idx_split(folder, split="train", count=5, rows=28, label_values=None, gzipped=True,
                    image_magic=0x803, label_count=None):
    """Writes one split's IDX image and label files, with knobs to break them."""
    image_stem, label_stem = data.MNIST_IDX_FILES[split]
    images = np.arange(count * rows * 28, dtype=np.uint64).astype(np.uint8)
    labels = np.array(label_values if label_values is not None else np.arange(count) % 10, dtype=np.uint8)
    label_count = len(labels) if label_count is None else label_count
    contents = {
        image_stem: struct.pack(">IIII", image_magic, count, rows, 28) + images.tobytes(),
        label_stem: struct.pack(">II", 0x801, label_count) + labels.tobytes(),
    }
    for stem, raw in contents.items():
        path = folder / (f"{stem}.gz" if gzipped else stem)
        path.write_bytes(gzip.compress(raw) if gzipped else raw)
    return folder


@pytest.mark.parametrize("gzipped", [True, False])
def test_reads_good_idx_files(tmp_path, gzipped):
    split = data.read_idx_split(write_idx_split(tmp_path, count=7, gzipped=gzipped), "train")
    assert split.images.shape == (7, 28, 28, 1) and split.images.dtype == np.uint8
    assert split.labels.tolist() == list(range(7))


def test_truncated_file_names_the_file(tmp_path):
    write_idx_split(tmp_path, gzipped=False)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte.*truncated"):
        data.read_idx_split(tmp_path, "train")


def test_corrupt_gzip_names_the_file(tmp_path):
    write_idx_split(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(data.DataError, match="train-labels-idx1-ubyte.gz: cannot read"):
        data.read_idx_split(tmp_path, "train")


def test_wrong_magic_is_rejected(tmp_path):
    write_idx_split(tmp_path, image_magic=0x801)
    with pytest.raises(data.DataError, match="magic number 0x00000801 is not IDX images"):
        data.read_idx_split(tmp_path, "train")


def test_images_and_labels_that_disagree_are_rejected(tmp_path):
    write_idx_split(tmp_path, count=5, label_values=[0, 1, 2, 3])
    with pytest.raises(data.DataError, match="5 images but 4 labels"):
        data.read_idx_split(tmp_path, "train")


@pytest.mark.parametrize(
    "arguments,message",
    [
        ({"rows": 27}, r"train images are \(27, 28, 1\), data.image_shape says \[28, 28, 1\]; set data.image_shape"),
        ({"label_values": [0, 1, 2, 3, 12]}, r"train labels span 0..12, outside 0..9 \(data.num_classes=10\)"),
    ],
)
def test_files_that_disagree_with_the_data_config_are_rejected(compose, tmp_path, arguments, message):
    write_idx_split(tmp_path, **arguments)
    write_idx_split(tmp_path, "test")
    config = compose(["data.source=idx", f"data.idx_dir={tmp_path}", "data.batch_size=2"])
    with pytest.raises(data.DataError, match=message):
        data.load_datasets(config.data)


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(data.DataError, match="is not a folder.*dataset-fashion-mnist"):
        data.read_idx_split(tmp_path / "nowhere", "train")
    with pytest.raises(data.DataError, match="missing t10k-images-idx3-ubyte"):
        data.read_idx_split(tmp_path, "test")


def test_real_fashion_mnist(compose, real_data):
    config = compose([*real_data, "data.batch_size=32"])
    datasets = data.load_datasets(config.data)
    assert datasets.train.images.shape == (60000, 28, 28, 1)
    assert datasets.test.images.shape == (10000, 28, 28, 1)
    assert np.bincount(datasets.test.labels).tolist() == [1000] * 10
    images, labels = next(iter(data.make_batches(datasets.test, datasets.batch_size)))
    assert images.dtype.name == "float32" and images.shape == (32, 28, 28, 1)
    assert 0.0 <= float(np.min(images)) and float(np.max(images)) <= 1.0
    assert labels.dtype.name == "int64"


def test_an_empty_tfds_dataset_is_one_error_naming_it(compose, tmp_path):
    config = compose(["data=mnist", "data.source=tfds", f"data.tfds_data_dir={tmp_path}", "data.batch_size=8"])
    with tfds.testing.mock_data(num_examples=0), pytest.raises(data.DataError, match=r"^data.name=mnist from .*: "
                                                                                    r"the train split holds no "
                                                                                    r"examples; point"):
        data.load_datasets(config.data)


def test_tfds_path_under_mock_data(compose, tmp_path):
    config = compose(["data=mnist", "data.source=tfds", f"data.tfds_data_dir={tmp_path}", "data.batch_size=8"])
    with tfds.testing.mock_data(num_examples=16):
        datasets = data.load_datasets(config.data)
    assert datasets.train.images.shape == (16, 28, 28, 1)
    assert datasets.train.images.dtype == np.uint8
    images, _ = next(iter(data.make_batches(datasets.test, datasets.batch_size)))
    assert images.shape == (8, 28, 28, 1) and images.dtype.name == "float32"


def _online(host="storage.googleapis.com") -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(_online(), reason="checks the offline failure; this machine can download MNIST")
def test_tfds_offline_fails_fast_with_instructions(compose, tmp_path):
    config = compose(["data=mnist", f"data.tfds_data_dir={tmp_path}"])
    started = time.monotonic()
    with pytest.raises(data.DataError) as error:
        data.load_datasets(config.data)
    assert time.monotonic() - started < 15
    message = str(error.value)
    assert str(tmp_path / "downloads" / "manual") in message
    assert "train-images-idx3-ubyte.gz" in message and "data.source=idx" in message


def test_batch_larger_than_split_is_rejected(compose, tmp_path):
    write_idx_split(tmp_path, count=5)
    write_idx_split(tmp_path, split="test", count=5)
    config = compose(["data.source=idx", f"data.idx_dir={tmp_path}", "data.batch_size=6"])
    with pytest.raises(data.DataError, match="data.batch_size=6 exceeds the 5 training examples"):
        data.load_datasets(config.data)
