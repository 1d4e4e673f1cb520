"""Every way data and names come in, refused before work starts: one line naming the value and the fix, a
non-zero exit, no run left RUNNING and nothing registered. One case per input path, each a real command."""

import gzip
import pathlib
import re
import struct

import numpy as np
import pytest
from helpers import FASHION_MNIST_DIR, QUICK_INFER, run_module


def write_idx_folder(folder: pathlib.Path, count=4, rows=28, image_magic=0x803, label_value=1, label_count=None,
                     cut_bytes=0) -> pathlib.Path:
    """The four IDX files of a tiny dataset, gzipped, with one thing wrong as asked."""
    folder.mkdir()
    label_count = count if label_count is None else label_count
    for split in ("train", "t10k"):
        images = struct.pack(">IIII", image_magic, count, rows, 28) + bytes(count * rows * 28)
        labels = struct.pack(">II", 0x801, label_count) + bytes([label_value]) * label_count
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images[:len(images) - cut_bytes]))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return folder


def dead_run_without_checkpoints(store, tmp_path: pathlib.Path) -> str:
    """A KILLED run whose checkpoint folder is empty: a job killed before its first checkpoint."""
    client = store.client()
    experiment = client.get_experiment_by_name("mixed-precision") or client.get_experiment(
        client.create_experiment("mixed-precision", artifact_location=(tmp_path / "artifacts").as_uri()))
    (tmp_path / "no-checkpoints").mkdir()
    run = client.create_run(experiment.experiment_id, run_name="killed-early",
                            tags={"checkpoint.dir": str(tmp_path / "no-checkpoints")})
    client.set_terminated(run.info.run_id, "KILLED")
    return run.info.run_id


# (command, overrides with {placeholders}, the one ERROR line it must print). Placeholders: {file} (a file
# where a folder belongs), {folder} (a folder where a file belongs), {idx:<kind>} (a broken IDX folder),
# {resume} (a run that can be resumed but has no checkpoint).
CASES = [
    # Data: IDX of every size, header fields, label ranges, shapes; TFDS; folders that are files.
    ("pipeline", ["data.idx_dir={idx:empty}"], r"the train split holds no images \(its IDX header counts 0\); point "
                                                r"data.idx_dir at a folder of the dataset's four files"),
    ("pipeline", ["data.idx_dir={idx:magic}"], r"magic number 0x00000999 is not IDX images"),
    ("pipeline", ["data.idx_dir={idx:shape}"], r"train images are \(32, 28, 1\), data.image_shape says \[28, 28, 1\]"),
    ("pipeline", ["data.idx_dir={idx:label}"], r"train labels span 10\.\.10, outside 0\.\.9 \(data.num_classes=10\)"),
    ("pipeline", ["data.idx_dir={idx:count}"], r"train split has 4 images but 3 labels"),
    ("pipeline", ["data.idx_dir={idx:cut}"], r"header promises \d+ \(truncated or corrupt\)"),
    ("pipeline", ["data.idx_dir={file}"], r"data.idx_dir=\S+ is a file, not a folder; point data.idx_dir at a folder"),
    ("pipeline", ["data=mnist", "data.source=tfds", "data.tfds_data_dir={file}"],
     r"data.tfds_data_dir=\S+ is a file, not a folder"),
    ("pipeline", ["data.batch_size=60001"], r"data.batch_size=60001 exceeds the 60000 training examples"),
    # Names: experiment, registered model, resumed run; empty, blank and padded.
    ("pipeline", ["tracking.experiment=''"], r"tracking.experiment='' is empty; give a name$"),
    ("pipeline", ["tracking.experiment='  '"], r"tracking.experiment='  ' is empty; give a name$"),
    ("pipeline", ["tracking.experiment=' team-a'"], r"tracking.experiment=' team-a' has spaces around it; use "
                                                    r"'team-a'"),
    ("pipeline", ["tracking.registered_model=''"], r"tracking.registered_model='' is empty; give a name, or "
                                                   r"tracking.registered_model=null"),
    ("pipeline", ["tracking.registered_model='  '"], r"tracking.registered_model='  ' is empty"),
    ("pipeline", ["train.resume=''"], r"train.resume='' is empty; give a name, or train.resume=null"),
    # Store URIs of every scheme, and paths of the wrong kind.
    ("pipeline", ["tracking.uri=''"], r"tracking.uri is empty; use sqlite:///<folder>/mlflow.db"),
    ("pipeline", ["tracking.uri=file:./mlruns"], r"tracking.uri=file:./mlruns is a plain file store, which MLflow 3 "
                                                 r"refuses; use sqlite:///mlruns/mlflow.db"),
    ("pipeline", ["tracking.uri=./mlruns"], r"tracking.uri=./mlruns is a plain file store"),
    ("pipeline", ["tracking.uri=ftp://127.0.0.1/store"], r"tracking.uri=ftp://127.0.0.1/store: ftp is not a store "
                                                          r"scheme"),
    ("pipeline", ["tracking.uri=sqlite:///{folder}"], r"names a folder; name the database file in it: "
                                                      r"sqlite:///\S+/mlflow.db"),
    ("pipeline", ["tracking.uri=http://127.0.0.1:9"], r"tracking.uri=http://127.0.0.1:9 is unreachable"),
    ("pipeline", ["tracking.artifact_root={file}"], r"tracking.artifact_root=\S+ is a file, not a folder"),
    ("pipeline", ["export.dir={file}"], r"export.dir=\S+ is a file, not a folder"),
    ("pipeline", ["train.checkpoint_dir={file}"], r"train.checkpoint_dir=\S+ is a file, not a folder"),
    # Checkpoint and resume references.
    ("pipeline", ["train.resume=0123456789abcdef0123456789abcdef"], r"train.resume=0123456789abcdef0123456789abcdef: "
                                                                    r"no such run"),
    ("pipeline", ["train.resume={resume}"], r"no checkpoint in \S+/no-checkpoints: nothing to resume from; rerun the "
                                            r"job without train.resume"),
    # The other commands' references.
    ("pipeline.report", ["sweep_id='  '"], r"sweep_id='  ' is empty; give a name, or sweep_id=null"),
    ("pipeline.report", ["sweep_id=/no/such/sweep"], r"no sweep found in \S+ \(sweep_id=/no/such/sweep\)"),
    ("pipeline.promote", ["aliases.champion=''"], r"aliases.champion='' is empty; give a name$"),
    ("pipeline.promote", ["tracking.registered_model=' '"], r"tracking.registered_model=' ' is empty"),
    ("pipeline.infer_model", ["model_uri=''"], r"model_uri='' is empty; give a name$"),
    ("pipeline.infer_model", ["model_uri=models:/no-such-model@champion", "data=fashion_mnist", "data.source=idx"],
     r"model_uri=models:/no-such-model@champion: .*; check the name, @alias or /version"),
]
BROKEN_IDX = {"empty": {"count": 0}, "magic": {"image_magic": 0x999}, "shape": {"rows": 32},
              "label": {"label_value": 10}, "count": {"label_count": 3}, "cut": {"cut_bytes": 10}}


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("command,overrides,message", CASES, ids=[f"{case[0]} {' '.join(case[1])}" for case in CASES])
def test_bad_input_is_one_line_with_no_run_left_running(tmp_path, store, command, overrides, message):
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "a-folder").mkdir()
    places = {"file": tmp_path / "a-file", "folder": tmp_path / "a-folder"}
    arguments = []
    for override in overrides:
        for kind, options in BROKEN_IDX.items():
            if f"{{idx:{kind}}}" in override:
                places[f"idx:{kind}"] = write_idx_folder(tmp_path / f"idx-{kind}", **options)
        if "{resume}" in override:
            places["resume"] = dead_run_without_checkpoints(store, tmp_path)
        for name, place in places.items():
            override = override.replace(f"{{{name}}}", str(place))
        arguments.append(override)
    if command == "pipeline":
        arguments = ["data=fashion_mnist", "data.source=idx", f"data.idx_dir={FASHION_MNIST_DIR}",
                     "train.max_steps=5", *QUICK_INFER, *arguments]
    # The store's keys first: a case that names its own tracking.uri overrides them.
    result = run_module(command, [*store.overrides, *arguments], cwd=tmp_path, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and re.search(message, errors[0]), output[-3000:]
    if (store.folder / "mlflow.db").exists():
        client = store.client()
        runs = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
        assert [run.info.run_name for run in runs if run.info.status in ("RUNNING", "FINISHED")] == []
        assert client.search_model_versions() == []


def test_the_broken_idx_folders_are_what_their_names_say(compose, tmp_path):
    """The fixtures above: each folder breaks loading the way its case says, and a sound one loads."""
    from pipeline.core import data

    def load(folder):
        return data.load_datasets(compose(["data.source=idx", f"data.idx_dir={folder}", "data.batch_size=2"]).data)

    sound = load(write_idx_folder(tmp_path / "sound"))
    assert sound.train.images.shape == (4, 28, 28, 1) and np.all(sound.train.labels == 1)
    for kind, options in BROKEN_IDX.items():
        with pytest.raises(data.DataError):
            load(write_idx_folder(tmp_path / kind, **options))
