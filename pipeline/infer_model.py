"""`python -m pipeline.infer_model model_uri=models:/<name>@champion`: measure a registered model.

Runs the evaluate and infer stages on the test split with the same metrics as after training:
the exported SavedModel logged with the model's run is what is measured, the logged Keras model
is the reference for parity.
"""

import hydra
from omegaconf import DictConfig

import pipeline.core.config  # registers the schemas conf/ names; validate_command
from pipeline import console, failures, job


@hydra.main(version_base="1.3", config_path="../conf", config_name="infer_model")
@failures.reporting_errors
def main(config: DictConfig) -> float:
    pipeline.core.config.validate_command(config)  # before the store is opened
    from pipeline.tracking import models, runs, store

    store.prepare(config.tracking)
    models.resolve(config.model_uri)  # a wrong reference fails here, in seconds, before any run is opened
    console.import_tensorflow()
    from pipeline.core import data
    from pipeline.stages import evaluate, infer

    datasets = data.load_datasets(config.data)
    with runs.start_run(config.tracking, f"infer {config.model_uri}", {"source.model_uri": config.model_uri}):
        reference_model, served = models.load_logged_model(config.model_uri)
        evaluated = evaluate.evaluate(reference_model, datasets)
        measure = infer.infer_litert if str(served).endswith(".tflite") else infer.infer  # what the URI serves
        inferred = measure(served, datasets.test, evaluated.logits, config.infer)
        runs.log_metrics(evaluated.metrics() | inferred.metrics())
        job.log_confusion_matrix(evaluated.confusion)
    headline = {"eval/loss": evaluated.loss, "eval/accuracy": evaluated.accuracy} | inferred.metrics()
    for name, value in headline.items():
        print(f"{name:24s} {value:.6g}")
    return inferred.accuracy


if __name__ == "__main__":
    main()
