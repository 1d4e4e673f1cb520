"""Export stage: the trained model as a serving SavedModel, optionally under another policy."""

import dataclasses
import pathlib
import shutil

import keras

from pipeline.config import CnnConfig, ExportConfig, MlpConfig
from pipeline.core import model as model_lib


@dataclasses.dataclass
class ExportResult:
    """The model that was exported (the one to register and serve), where, and in which policy."""

    model: keras.Model
    saved_model_dir: pathlib.Path
    policy: str


def export(trained: keras.Model, export_config: ExportConfig, model_config: MlpConfig | CnnConfig,
           training_policy: str, seed: int, distributed: bool = False) -> ExportResult:
    """Writes the serving model as a SavedModel under <export.dir>/saved_model.

    With export.serving_policy other than `same`, the model is rebuilt under that policy from the
    same definition and takes the trained weights (variables are float32 under every policy), so
    a model trained in mixed_float16 on a GPU can be served in float32 or bfloat16 on a CPU.

    A model trained under a tf.distribute strategy (`distributed`) is rebuilt the same way, so
    the SavedModel holds plain variables rather than one copy per replica.

    The `serve` endpoint takes float32 images (batch, 28, 28, 1) scaled to [0, 1] and returns
    float32 logits (batch, 10).
    """
    policy = training_policy if export_config.serving_policy == "same" else str(export_config.serving_policy)
    serving_model = trained
    if policy != training_policy or distributed:
        serving_model = model_lib.build_model(model_config, policy, seed=seed)
        serving_model.set_weights(trained.get_weights())
    saved_model_dir = pathlib.Path(export_config.dir) / "saved_model"
    if saved_model_dir.exists():
        shutil.rmtree(saved_model_dir)
    saved_model_dir.parent.mkdir(parents=True, exist_ok=True)
    serving_model.export(str(saved_model_dir), format="tf_saved_model", verbose=False)
    return ExportResult(model=serving_model, saved_model_dir=saved_model_dir, policy=policy)
