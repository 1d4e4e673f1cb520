"""hparams_search=lr_batch_size: Hydra's Optuna sweeper, each trial a child run of the search's parent run."""

import pytest
from helpers import QUICK_INFER, run_pipeline


def test_search_config_sets_up_optuna_per_policy(compose):
    config = compose(["hparams_search=lr_batch_size", "precision=mixed_bfloat16"], return_hydra_config=True)
    sweeper = config.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.direction == "maximize" and sweeper.study_name == "lr-batch-size-mixed_bfloat16"
    assert set(sweeper.params) == {"train.learning_rate", "data.batch_size"}


@pytest.mark.e2e
@pytest.mark.slow
def test_three_trial_search_logs_child_runs_and_the_best_trial(tmp_path, store, real_data):
    result = run_pipeline(
        ["-m", "hparams_search=lr_batch_size", "hydra.sweeper.n_trials=3", "precision=mixed_bfloat16", *real_data,
         "train.max_steps=60", *store.overrides, "tracking.registered_model=null", *QUICK_INFER],
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Study name: lr-batch-size-mixed_bfloat16" in output
    parent, trials = store.sweep()
    assert len(store.runs()) == 4 and len(trials) == 3 and parent.info.status == "FINISHED"
    assert {trial.info.status for trial in trials} == {"FINISHED"}
    assert {trial.data.params["precision.policy"] for trial in trials} == {"mixed_bfloat16"}
    learning_rates = {float(trial.data.params["train.learning_rate"]) for trial in trials}
    assert len(learning_rates) == 3 and all(1e-4 <= rate <= 1e-2 for rate in learning_rates)  # sampled, in range
    assert {int(trial.data.params["data.batch_size"]) for trial in trials} <= {32, 64, 128, 256}
    # The objective each job returned is its eval accuracy; the best is recorded on the parent.
    best = max(trials, key=lambda trial: trial.data.metrics["eval/accuracy"])
    assert parent.data.metrics["search/best_value"] == best.data.metrics["eval/accuracy"]
    assert float(parent.data.tags["search.best.train.learning_rate"]) == float(
        best.data.params["train.learning_rate"])
    assert [artifact.path for artifact in store.client().list_artifacts(parent.info.run_id, "search")] == [
        "search/optimization_results.yaml"]
