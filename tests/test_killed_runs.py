"""Runs whose process was killed hard (SIGKILL) are found by the next command and ended KILLED."""

import signal
import socket

import pytest
from helpers import interrupt_after_first_checkpoint, resumable_job, run_module

from pipeline.tracking import liveness
from pipeline.tracking import store as store_lib


def test_only_runs_of_processes_gone_from_this_host_are_ended(compose, store):
    tracking_config = compose(store.overrides).tracking
    experiment_id = store_lib.prepare(tracking_config)
    client = store.client()
    own = liveness.process_tags()
    runs = {
        "alive": own,
        "gone": own | {liveness.PID_TAG: "999999999"},
        "reused pid": own | {liveness.START_TAG: "1"},
        "other host": own | {liveness.HOST_TAG: "elsewhere", liveness.PID_TAG: "999999999"},
    }
    run_ids = {name: client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
               for name, tags in runs.items()}

    ended = liveness.end_runs_of_dead_processes(client)

    assert sorted(name.split(" (")[0] for name in ended) == ["gone", "reused pid"]
    statuses = {name: client.get_run(run_id).info.status for name, run_id in run_ids.items()}
    assert statuses == {"alive": "RUNNING", "gone": "KILLED", "reused pid": "KILLED", "other host": "RUNNING"}
    assert "killed hard" in client.get_run(run_ids["gone"]).data.tags[liveness.REASON_TAG]


def test_a_command_in_one_experiment_ends_the_dead_runs_of_every_experiment(compose, store):
    """A team keeps several experiments in one store: a run killed hard in one of them must not stay RUNNING
    until someone opens that experiment again."""
    client = store.client()
    dead = liveness.process_tags() | {liveness.PID_TAG: "999999999"}
    other_experiments = [client.create_experiment(name) for name in ("team-a", "team-b")]
    run_ids = [client.create_run(experiment_id, run_name="killed", tags=dead).info.run_id
               for experiment_id in other_experiments]
    store_lib.prepare(compose([*store.overrides, "tracking.experiment=team-c"]).tracking)
    for run_id in run_ids:
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and "killed hard" in run.data.tags[liveness.REASON_TAG]


@pytest.mark.e2e
@pytest.mark.slow
def test_a_job_killed_hard_is_ended_by_a_command_in_another_experiment(tmp_path, store, real_data):
    """Resuming such a run is the same as resuming one a signal stopped (test_resume.py, test_outages.py)."""
    arguments = resumable_job(store, real_data, tmp_path)
    interrupt_after_first_checkpoint(arguments, tmp_path, signal.SIGKILL)  # no handler runs: the run stays RUNNING
    killed = store.only_run()
    assert killed.info.status == "RUNNING" and killed.data.tags[liveness.HOST_TAG] == socket.gethostname()

    # Any command that opens the store, in another experiment of it.
    report = run_module("pipeline.report", [*store.overrides, "tracking.experiment=another-team"], cwd=tmp_path)
    assert "ended 1 run(s) left RUNNING by a process that is gone, as KILLED" in report.stdout + report.stderr
    ended = store.only_run()
    assert ended.info.status == "KILLED" and "killed hard" in ended.data.tags[liveness.REASON_TAG]
