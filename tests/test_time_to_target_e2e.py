"""End to end on real Fashion-MNIST: a sweep with a target accuracy, scored per cell and linked to its jobs,
and a job whose target is out of reach."""

import urllib.parse

import pytest
from helpers import QUICK_INFER, run_pipeline

pytestmark = pytest.mark.e2e


@pytest.mark.slow
def test_a_sweep_times_each_job_to_its_target_and_scores_each_cell(tmp_path, store, real_data):
    result = run_pipeline(["-m", "precision=float32,mixed_bfloat16", "repeats=3", *real_data,
                           "train.target_accuracy=0.75", "train.eval_every_steps=50", "train.max_steps=1000",
                           "stages=[train,evaluate]", *store.overrides], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, jobs = store.sweep()
    assert len(jobs) == 6
    client = store.client()
    for job in jobs:
        metrics, tags = job.data.metrics, job.data.tags
        assert tags["train.target_reached"] == "true" and tags["train.evaluation_metric"] == "eval/accuracy"
        steps = metrics["train/steps_to_target"]
        assert metrics["train/steps"] == steps and steps % 50 == 0  # stopped at the evaluation that reached it
        assert metrics["train/examples_to_target"] == steps * 128
        assert 0 < metrics["train/time_to_target_without_compile_s"] <= metrics["train/time_to_target_s"]
        assert 0 < metrics["train/evaluation_share"] < 1  # an MLP evaluating every 50 steps: about half
        history = client.get_metric_history(job.info.run_id, "eval/accuracy")
        elapsed = client.get_metric_history(job.info.run_id, "train/elapsed_s")
        # Every evaluation at its step, the clock's seconds at the same steps, and the final figure at the last.
        assert [point.step for point in elapsed] == list(range(50, int(steps) + 1, 50))
        assert sorted({point.step for point in history}) == [point.step for point in elapsed]
        assert max(point.value for point in history if point.step == steps) >= 0.75
        assert metrics["train/time_to_target_s"] == pytest.approx(elapsed[-1].value)
    report = next((tmp_path / "multirun").rglob("report.md")).read_text()
    assert "## Time to target" in report and report.count("| 3/3 |") == 2
    assert "mixed_bfloat16 reaches 0.75 in " in result.stdout and "3/3 seeds reached (float32 3/3)" in result.stdout
    assert "accuracy_vs_time.png" in {artifact.path.split("/")[-1]
                                      for artifact in client.list_artifacts(parent.info.run_id, "report")}
    # The printed link opens the sweep's jobs (a search on their parent), in the chart view.
    (url,) = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("runs:")]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url.split("#", 1)[1]).query)
    assert query["searchFilter"] == [f"tags.mlflow.parentRunId = '{parent.info.run_id}'"]
    assert query["compareRunsMode"] == ["CHART"]  # and ordered by other than start time, or the UI nests them
    assert query["orderByKey"] == ["metrics.`train/time_to_target_s`"] and query["orderByAsc"] == ["true"]
    assert {run.info.run_id for run in client.search_runs([parent.info.experiment_id], query["searchFilter"][0])} == {
        job.info.run_id for job in jobs}


@pytest.mark.slow
def test_a_target_out_of_reach_stops_at_the_budget_and_registers_nothing(tmp_path, store, real_data):
    result = run_pipeline([*real_data, "train.target_accuracy=0.99", "train.max_steps=100", "train.eval_every_steps=50",
                           *store.overrides, *QUICK_INFER], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if "counted as not converged" in line]
    assert len(lines) == 1 and "train.target_accuracy=0.99 not reached in the budget of 100 steps" in lines[0]
    run = store.only_run()
    assert run.info.status == "FINISHED" and run.data.metrics["train/steps"] == 100
    assert run.data.tags["train.target_reached"] == "false" and "not reached" in run.data.tags["registry.skipped"]
    assert "train/time_to_target_s" not in run.data.metrics
    assert store.versions() == []
