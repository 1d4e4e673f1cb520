"""Export stage: the trained model as a serving SavedModel, optionally under another policy, and in
the LiteRT formats export.formats lists.

TensorFlow's converter (tf.lite.TFLiteConverter) writes the LiteRT files. Every format converts the
float32 rebuild of the trained model (same definition, trained weights), so each format's precision
is its own choice, whatever policy the model trained under.
"""

import dataclasses
import pathlib
import shutil

import keras
import numpy as np
import tensorflow as tf

from pipeline import PipelineError, console
from pipeline.core import data, files, precision
from pipeline.core import model as model_lib
from pipeline.core.config import ExportConfig, ExportFormat
from pipeline.serving import litert


class ExportError(PipelineError):
    """The exported model could not be written (a full or read-only disk)."""


class ConversionError(PipelineError):
    """A format could not be converted; the message names it."""


@dataclasses.dataclass
class ExportResult:
    """The model that was exported (the one to register and serve), where, in which policy, and the
    LiteRT files by format."""

    model: keras.Model
    saved_model_dir: pathlib.Path
    policy: str
    litert_files: dict[str, pathlib.Path] = dataclasses.field(default_factory=dict)


def export(trained: keras.Model, export_config: ExportConfig, model_config,
           training_policy: str, seed: int, distributed: bool = False,
           calibration_split: data.Split | None = None) -> ExportResult:
    """Writes the serving model as a SavedModel under <export.dir>/saved_model, and each LiteRT format
    of export.formats as <export.dir>/<format>.tflite.

    With export.serving_policy other than `same`, the model is rebuilt under that policy from the
    same definition and takes the trained weights (variables are float32 under every policy), so
    a model trained in mixed_float16 on a GPU can be served in float32 or bfloat16 on a CPU.

    A model trained under a tf.distribute strategy (`distributed`) is rebuilt the same way, so
    the SavedModel holds plain variables rather than one copy per replica.

    The `serve` endpoint takes float32 images (batch, *data.image_shape) scaled to [0, 1] and returns
    float32 logits (batch, 10).

    Args:
        calibration_split: where litert_int8's calibration images come from (the training split),
            export.calibration_examples of them, chosen with `seed`.

    Raises:
        ConversionError: a LiteRT format failed to convert (one line naming it).
        ExportError: export.dir cannot take the files (full, read-only).
    """
    policy = training_policy if export_config.serving_policy == "same" else str(export_config.serving_policy)
    serving_model = trained
    if policy != training_policy or distributed:
        serving_model = _rebuild(trained, model_config, policy, seed)
    folder = pathlib.Path(export_config.dir)
    saved_model_dir = _write_saved_model(serving_model, folder / "saved_model")
    formats = [ExportFormat(name) for name in export_config.formats if name != ExportFormat.saved_model]
    result = ExportResult(model=serving_model, saved_model_dir=saved_model_dir, policy=policy)
    if not formats:
        return result
    # LiteRT converts float32 graphs: its own formats set their precision (a bfloat16 graph does not convert).
    source = saved_model_dir
    if precision.spec(policy).compute_dtype != "float32":
        float32_model = _rebuild(trained, model_config, precision.REFERENCE, seed)
        source = _write_saved_model(float32_model, folder / f"{precision.REFERENCE}_saved_model")
    calibration = _calibration_images(calibration_split, export_config.calibration_examples, seed)
    for export_format in formats:
        result.litert_files[str(export_format)] = convert(source, export_format, calibration,
                                                          folder / f"{export_format}{litert.SUFFIX}")
    return result


def convert(saved_model_dir: pathlib.Path, export_format: ExportFormat, calibration_images: np.ndarray | None,
            path: pathlib.Path) -> pathlib.Path:
    """Writes the float32 SavedModel at `saved_model_dir` as `export_format` to `path`.

    Args:
        saved_model_dir: a float32 SavedModel whose `serve` takes float32 images (batch, *data.image_shape).
        export_format: one of the litert_* formats.
        calibration_images: float32 images in [0, 1] that set full int8's activation ranges.
        path: the .tflite file to write.

    Raises:
        ConversionError: the converter refused the model.
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if export_format != ExportFormat.litert_float32:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # weights quantized (or halved, below)
    if export_format == ExportFormat.litert_float16:
        converter.target_spec.supported_types = [tf.float16]
    elif export_format == ExportFormat.litert_int8:
        if calibration_images is None:
            raise ConversionError("export.formats: litert_int8 needs calibration images (the training split)")
        converter.representative_dataset = lambda: ([image[None]] for image in calibration_images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]  # integer kernels only
    try:
        with console.native_stderr_silenced():
            flatbuffer = converter.convert()
    except Exception as error:  # the converter's own errors name an op or a type, in many classes
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise ConversionError(f"export.formats: {export_format} failed to convert ({reason}); "
                              f"drop {export_format} from export.formats") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(flatbuffer)
    except OSError as error:
        path.unlink(missing_ok=True)
        raise _write_error(path, error) from None
    return path


def _rebuild(trained: keras.Model, model_config, policy: str, seed: int) -> keras.Model:
    rebuilt = model_lib.build_model(model_config, policy, seed=seed)
    rebuilt.set_weights(trained.get_weights())
    return rebuilt


def _write_saved_model(model: keras.Model, saved_model_dir: pathlib.Path) -> pathlib.Path:
    try:
        if saved_model_dir.exists():
            shutil.rmtree(saved_model_dir)
        saved_model_dir.parent.mkdir(parents=True, exist_ok=True)
        model.export(str(saved_model_dir), format="tf_saved_model", verbose=False)
    except (OSError, tf.errors.OpError) as error:
        shutil.rmtree(saved_model_dir, ignore_errors=True)  # no half-written model left to be mistaken for one
        raise _write_error(saved_model_dir, error) from None
    return saved_model_dir


def _write_error(path: pathlib.Path, error: BaseException) -> ExportError:
    return ExportError(f"export.dir={path.parent}: cannot write {path.name} ({files.reason(error)}); "
                       f"{files.fix('export.dir', error)}")


def _calibration_images(split: data.Split | None, count: int, seed: int) -> np.ndarray | None:
    """A seeded sample of the training split as float32 in [0, 1]: the same images for the same seed."""
    if split is None:
        return None
    chosen = np.random.default_rng(seed).choice(len(split.images), size=min(count, len(split.images)), replace=False)
    return data.normalize(split.images[np.sort(chosen)]).numpy()
