"""Export stage: the trained model as a serving SavedModel with a `serve` endpoint."""

import dataclasses
import pathlib
import shutil

import keras


@dataclasses.dataclass
class ExportResult:
    """Where the SavedModel is; the infer stage loads it from there."""

    saved_model_dir: pathlib.Path


def export(model: keras.Model, export_dir) -> ExportResult:
    """Writes `model` as a SavedModel under <export_dir>/saved_model, replacing an earlier export.

    The `serve` endpoint takes float32 images (batch, 28, 28, 1) scaled to [0, 1] and returns
    float32 logits (batch, 10), computed under the policy the model was built with.
    """
    saved_model_dir = pathlib.Path(export_dir) / "saved_model"
    if saved_model_dir.exists():
        shutil.rmtree(saved_model_dir)
    saved_model_dir.parent.mkdir(parents=True, exist_ok=True)
    model.export(str(saved_model_dir), format="tf_saved_model", verbose=False)
    return ExportResult(saved_model_dir=saved_model_dir)
