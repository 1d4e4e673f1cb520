"""MLflow tracking against a real SQLite store: run status on every exit, params, metric batches."""

import mlflow
import pytest

from pipeline import preemption
from pipeline.tracking import models, runs
from pipeline.tracking import store as store_lib


@pytest.fixture
def tracking_config(compose, store):
    return compose(store.overrides).tracking


def test_store_and_experiment_are_created_once(tracking_config, tmp_path):
    first = store_lib.prepare(tracking_config)
    assert store_lib.prepare(tracking_config) == first
    experiment = mlflow.MlflowClient(tracking_config.uri).get_experiment(first)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.artifact_location == (tmp_path / "artifacts" / tracking_config.experiment).as_uri()


def test_finished_run_has_params_and_metric_history(compose, store, tracking_config):
    config = compose(["precision=mixed_bfloat16", "data.batch_size=64"])
    with runs.start_run(tracking_config, "mlp-mixed_bfloat16-bs64", {"precision.policy": "mixed_bfloat16"}):
        runs.log_config(config, ["precision=mixed_bfloat16", "data.batch_size=64"])
        runs.log_metric_history("train/loss", [(step, 1.0 / step) for step in range(1, 1502)])
        runs.log_metrics({"eval/accuracy": 0.9})
    run = store.only_run()
    assert run.info.status == "FINISHED" and run.info.run_name == "mlp-mixed_bfloat16-bs64"
    assert run.data.params["precision.policy"] == "mixed_bfloat16"
    assert run.data.params["data.batch_size"] == "64"
    assert run.data.tags["version.mlflow"] == mlflow.__version__
    history = store.client().get_metric_history(run.info.run_id, "train/loss")
    assert sorted(point.step for point in history) == list(range(1, 1502))  # past log_batch's 1000 cap
    assert {artifact.path for artifact in store.client().list_artifacts(run.info.run_id, "config")} == {
        "config/config.yaml", "config/overrides.yaml"}


@pytest.mark.parametrize("error,status", [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED"),
                                          (preemption.JobStopped(15, step=40), "KILLED")])
def test_failed_or_interrupted_run_is_never_left_running(store, tracking_config, error, status):
    with pytest.raises(type(error)):
        with runs.start_run(tracking_config, "doomed", {}):
            runs.log_metrics({"train/step_time_ms": 1.0})
            raise error
    run = store.only_run()
    assert run.info.status == status
    assert run.data.metrics["train/step_time_ms"] == 1.0  # what was logged before stays
    if status == "FAILED":
        assert run.data.tags["error"] == "RuntimeError: boom"
    if isinstance(error, preemption.JobStopped):
        assert run.data.tags["killed.reason"] == "SIGTERM at step 40"
    assert mlflow.active_run() is None


def test_flatten_uses_dotted_keys():
    assert runs.flatten({"data": {"batch_size": 64, "nested": {"x": 1}}, "top": "a"}) == {
        "data.batch_size": 64, "data.nested.x": 1, "top": "a"}


def test_logged_keras_models_load_in_safe_mode(tracking_config):
    """A model file carrying Python code (a Lambda layer) is refused, not executed."""
    import keras
    import numpy as np

    inputs = keras.Input(shape=(28, 28, 1))
    outputs = keras.layers.Lambda(lambda images: images * 2.0)(inputs)
    with runs.start_run(tracking_config, "lambda", {}) as tracked:
        # Listed requirements: MLflow would otherwise infer them in a subprocess.
        mlflow.tensorflow.log_model(keras.Model(inputs, outputs), name="keras_model", pip_requirements=["keras"],
                                    input_example=np.zeros((1, 28, 28, 1), np.float32))
    with pytest.raises(ValueError, match="safe_mode"):
        models.load_logged_model(f"runs:/{tracked.run_id}/keras_model")


def test_parallel_jobs_logging_the_same_dataset_all_link_to_it(tracking_config, store):
    # A joblib sweep's jobs log the same splits at once; MLflow's SQL store looks a dataset up, then
    # inserts it, so all but one insert hit the unique key. Unfixed, about half of these rounds failed.
    import threading

    import numpy as np

    from pipeline.core import data

    store_lib.prepare(tracking_config)
    mlflow.set_tracking_uri(tracking_config.uri)
    mlflow.set_experiment(tracking_config.experiment)
    jobs, rounds, errors = 6, 20, []

    def job(barrier, datasets):
        with mlflow.start_run():
            barrier.wait()
            try:
                runs.log_datasets(datasets)
            except Exception as error:  # noqa: BLE001 - collected, then asserted on in the main thread
                errors.append(error)

    for round_number in range(rounds):
        split = data.Split(np.full((2, 28, 28, 1), round_number, np.uint8), np.arange(2))
        datasets = data.Datasets(train=split, test=split, batch_size=2, num_classes=10, name=f"round{round_number}")
        barrier = threading.Barrier(jobs)
        threads = [threading.Thread(target=job, args=(barrier, datasets)) for _ in range(jobs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    linked = [len(run.inputs.dataset_inputs) for run in store.runs(tracking_config.experiment)]
    assert linked == [2] * rounds * jobs
