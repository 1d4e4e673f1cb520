"""MLflow "models from code" entry: MLflow stores this file with each logged model and runs it to load.

Plain source instead of a pickled object, so loading a served model unpickles nothing.
"""

import mlflow

from pipeline.serving.classifier import ImageClassifier

mlflow.models.set_model(ImageClassifier())
