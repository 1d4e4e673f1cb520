"""LiteRT exports: the trained model as .tflite files in float32, float16 weights, dynamic-range int8
and full int8, and LiteRT's interpreter to run them.

TensorFlow's converter (tf.lite.TFLiteConverter) writes the files; the interpreter is the
`ai-edge-litert` package's, which TensorFlow 2.21 names as the successor of tf.lite.Interpreter.
Every format converts the float32 rebuild of the trained model (same definition, trained weights),
so each format's precision is its own choice, whatever policy the model trained under. Inputs and
outputs stay float32 in every format, so one payload serves them all.
"""

import pathlib

import numpy as np

from pipeline import PipelineError, console
from pipeline.config import ExportFormat

SUFFIX = ".tflite"


class ConversionError(PipelineError):
    """A format could not be converted; the message names it."""


def convert(saved_model_dir: pathlib.Path, export_format: ExportFormat, calibration_images: np.ndarray | None,
            path: pathlib.Path) -> pathlib.Path:
    """Writes the float32 SavedModel at `saved_model_dir` as `export_format` to `path`.

    Args:
        saved_model_dir: a float32 SavedModel whose `serve` takes float32 images (batch, 28, 28, 1).
        export_format: one of the litert_* formats.
        calibration_images: float32 images in [0, 1] that set full int8's activation ranges.
        path: the .tflite file to write.

    Raises:
        ConversionError: the converter refused the model.
    """
    import tensorflow as tf

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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(flatbuffer)
    return path


class Runner:
    """Runs a .tflite model with LiteRT's interpreter: float32 images in, float32 logits out.

    The input is resized when the batch size changes (a new size allocates its tensors once).
    """

    def __init__(self, path, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        with console.native_stderr_silenced():  # the XNNPACK delegate's "INFO: Created ..." line
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self.batch_size = None

    def __call__(self, images) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if images.shape[0] != self.batch_size:
            self.interpreter.resize_tensor_input(self.input_index, images.shape)
            self.interpreter.allocate_tensors()
            self.batch_size = images.shape[0]
        self.interpreter.set_tensor(self.input_index, images)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index).copy()
