"""LiteRT's interpreter (the `ai-edge-litert` package, which TensorFlow 2.21 names as the successor of
tf.lite.Interpreter) running an exported .tflite file: in the infer stage and in the served model.

Inputs and outputs are float32 in every LiteRT format, so one payload serves them all.
"""

import numpy as np

from pipeline import console

SUFFIX = ".tflite"


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
        self.input_shape = tuple(self.interpreter.get_input_details()[0]["shape"])  # (batch, height, width, channels)
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
