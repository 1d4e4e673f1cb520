"""Models in MLflow: logging a job's served model beside its Keras model, and loading them back."""

import pathlib

import mlflow

import pipeline
from pipeline.serving import classifier
from pipeline.tracking.store import NotFoundError


def log_model(model, saved_model_dir, input_example) -> str:
    """Logs the served model and the Keras model behind it; returns the served model's URI.

    `model` (pyfunc): the exported SavedModel behind input checks (pipeline/serving/classifier.py), with
    signature and input example: what is registered and served. `keras_model`: the same network
    as a Keras model, the reference that inference from the registry compares against.
    """
    import keras

    keras.config.disable_interactive_logging()  # MLflow's predict on the example would draw a progress bar
    num_classes = model.output_shape[-1]
    served_uri = _log_pyfunc("model", {"saved_model": str(saved_model_dir)}, input_example, num_classes)
    mlflow.tensorflow.log_model(model, name="keras_model", signature=_signature(input_example, num_classes),
                                pip_requirements=_requirements())
    mlflow.log_artifacts(str(saved_model_dir), "serving_saved_model")  # browsable beside the run
    mlflow.set_tag("keras_model_uri", f"runs:/{mlflow.active_run().info.run_id}/keras_model")
    return served_uri


def log_litert_model(export_format: str, path, input_example, num_classes: int) -> str:
    """Logs a LiteRT file as a servable pyfunc model named model_<format> (the same input checks as the
    SavedModel's); returns its URI."""
    import ai_edge_litert

    return _log_pyfunc(f"model_{export_format}", {"litert_model": str(path)}, input_example, num_classes,
                       [f"ai-edge-litert=={ai_edge_litert.__version__}"])


def _log_pyfunc(name: str, artifacts: dict[str, str], input_example, num_classes: int, extra_requirements=()) -> str:
    """The served model: pipeline/serving/classifier.py's ImageClassifier over `artifacts`, as code (not a pickle),
    with the image signature and the input example."""
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(pathlib.Path(classifier.__file__).with_name("model_code.py")),
        artifacts=artifacts,
        code_paths=[str(pathlib.Path(pipeline.__file__).parent)],  # the pipeline package, so it loads anywhere
        signature=_signature(input_example, num_classes),
        input_example=input_example,
        pip_requirements=[*_requirements(), *extra_requirements],
    ).model_uri


def _signature(input_example, num_classes: int):
    """float32 images (batch, *the example's image shape) in, float32 logits (batch, num_classes) out."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *input_example.shape[1:]), "image")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes), "logits")]),
    )


def _requirements() -> list[str]:
    # Listing them skips MLflow's inference of requirements, which re-imports the model in a
    # subprocess and costs tens of seconds per job.
    import keras
    import tensorflow as tf

    return [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}", f"mlflow=={mlflow.__version__}"]


def resolve(model_uri: str) -> str:
    """The run that logged the model `model_uri` names (models:/<name>@<alias>, models:/<name>/<version>,
    runs:/<run id>/model), in the current store.

    Raises:
        NotFoundError: no such registered model, alias, version, run or logged model.
    """
    try:
        return mlflow.models.get_model_info(model_uri).run_id
    except (mlflow.exceptions.MlflowException, OSError) as error:
        raise NotFoundError(f"model_uri={model_uri}: {_first_line(error)}; check the name, @alias or /version "
                            "(the MLflow UI's Models page lists them), or the run id") from None


def load_logged_model(model_uri: str) -> tuple:
    """The Keras model logged beside `model_uri`, and a local copy of what `model_uri` serves: the
    SavedModel folder, or the LiteRT file of a model_<format> model.

    The Keras model loads in Keras's safe mode (MLflow's default), which refuses to run code
    (Lambda layers) stored in a model file.

    Raises:
        NotFoundError: as resolve, or the run holds no keras_model (a model this pipeline did not log).
    """
    import pipeline.core.vit  # noqa: F401  (registers the ViT's own layer, so its Keras model loads)

    run_id = resolve(model_uri)
    try:
        keras_model = mlflow.tensorflow.load_model(f"runs:/{run_id}/keras_model")
        served = pathlib.Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
        # The served model carries its own SavedModel or LiteRT file: measured from there, downloaded once.
        served_files = sorted(served.glob("artifacts/**/*.tflite")) + [
            saved_model.parent for saved_model in sorted(served.glob("artifacts/**/saved_model.pb"))]
        if served_files:
            return keras_model, served_files[0]
        return keras_model, mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="serving_saved_model")
    except (mlflow.exceptions.MlflowException, OSError) as error:
        raise NotFoundError(f"model_uri={model_uri}: its run {run_id} holds no keras_model or serving_saved_model "
                            f"({_first_line(error)}); point model_uri at a model this pipeline logged") from None


def _first_line(error: BaseException) -> str:
    message = getattr(error, "message", None) or str(error)
    # MLflow's messages end some sentences with a full stop and not others; ours goes on after a semicolon.
    return message.strip().splitlines()[0].rstrip(".") if message.strip() else type(error).__name__
