"""Checkpoints, resume after a kill, and bit-for-bit determinism."""

import re
import signal
import threading

import numpy as np
import pytest
from helpers import resumable_job, run_pipeline, signal_during_training, tiny_datasets

from pipeline import preemption
from pipeline.core import model
from pipeline.stages import train
from pipeline.training import checkpoints, steps


def run_to(compose, step_cap: int, checkpoint_dir, resume: bool, policy="mixed_float16"):
    """Trains (or resumes) the same job up to `step_cap` steps, checkpointing every 4."""
    config = compose(["train.epochs=3", f"train.max_steps={step_cap}", "train.steps_per_call=3",
                      "train.checkpoint_every_steps=4", f"train.checkpoint_dir={checkpoint_dir}"])
    built = model.build_model(config.model, policy, seed=0)
    optimizer = steps.make_optimizer(policy, config.train.learning_rate)
    checkpointer = checkpoints.Checkpointer(built, optimizer, str(checkpoint_dir), 4)
    start_step, _ = checkpointer.restore_latest() if resume else (0, 0.0)
    return train.train(built, tiny_datasets(), config.train, policy, optimizer=optimizer,
                       start_step=start_step, on_steps_done=checkpointer.save_if_due), start_step


def test_resumed_training_matches_uninterrupted_training(compose, tmp_path):
    """20 steps straight vs 12 steps, a fresh process state restored from step 12, then 8 more."""
    straight, _ = run_to(compose, 20, tmp_path / "straight", resume=False)
    run_to(compose, 14, tmp_path / "interrupted", resume=False)  # killed after step 14; last checkpoint at 12
    resumed, start_step = run_to(compose, 20, tmp_path / "interrupted", resume=True)
    assert start_step == 12 and resumed.steps == 20
    for expected, actual in zip(straight.model.weights, resumed.model.weights):
        np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    # The loss-scale state came back too.
    assert resumed.loss_scale == straight.loss_scale
    assert int(resumed.optimizer.iterations.numpy()) == int(straight.optimizer.iterations.numpy())


def test_restore_without_checkpoint_says_where_it_looked(compose, tmp_path):
    config = compose([])
    built = model.build_model(config.model, "float32", seed=0)
    checkpointer = checkpoints.Checkpointer(built, steps.make_optimizer("float32", 0.001), str(tmp_path), 4)
    with pytest.raises(checkpoints.CheckpointError, match=f"no checkpoint in {tmp_path}: nothing to resume from"):
        checkpointer.restore_latest()


def test_a_truncated_checkpoint_is_one_error_naming_it(compose, tmp_path):
    run_to(compose, 8, tmp_path / "cut", resume=False, policy="float32")  # checkpoints at steps 4 and 8
    (data_file,) = (tmp_path / "cut").glob("ckpt-8.data-*")
    data_file.write_bytes(data_file.read_bytes()[:100])  # a save cut short: a full disk, a killed copy
    with pytest.raises(checkpoints.CheckpointError, match=r"^train.checkpoint_dir=.*/cut: .*ckpt-8 cannot be read "
                                                          r"\(.+\); delete its files to resume from the checkpoint "
                                                          r"before it, or rerun the job without train.resume$"):
        run_to(compose, 12, tmp_path / "cut", resume=True, policy="float32")


def test_deterministic_training_is_bit_for_bit(compose):
    losses = []
    for _ in range(2):
        config = compose(["train.epochs=2", "train.deterministic=true"])
        result = train.train(model.build_model(config.model, "float32", seed=7), tiny_datasets(), config.train,
                             "float32")
        losses.append(result.final_loss)
    assert losses[0] == losses[1]


@pytest.mark.e2e
@pytest.mark.slow
def test_sigterm_mid_training_checkpoints_that_step_and_resume_finishes_the_same_run(tmp_path, store, real_data):
    """A scheduler's SIGTERM: a checkpoint at the step it came (none are periodic here), the run KILLED naming
    it, one line with the command that resumes, exit 143 within 10 s; the resumed run ends where an
    uninterrupted one does."""
    arguments = [argument for argument in resumable_job(store, real_data, tmp_path)
                 if not argument.startswith("train.checkpoint_every_steps=")]
    exit_code, seconds, output = signal_during_training(arguments, tmp_path, signal.SIGTERM)
    assert exit_code == 128 + signal.SIGTERM and seconds < 10, (exit_code, seconds, output[-3000:])
    (line,) = [line for line in output.splitlines() if "SIGTERM" in line]
    step = int(re.search(r"stopped by SIGTERM at step ([\d,]+), checkpoint saved", line)[1].replace(",", ""))
    killed = store.only_run()
    assert killed.info.status == "KILLED" and killed.data.tags["killed.reason"] == f"SIGTERM at step {step}"
    assert "Traceback" not in output and f"train.resume={killed.info.run_id}" in line
    assert (tmp_path / "run" / "checkpoints" / f"ckpt-{step}.index").exists() and 0 < step < 400
    points_before = store.client().get_metric_history(killed.info.run_id, "train/loss")
    assert points_before and max(point.step for point in points_before) <= step  # metrics so far are kept

    resume_command = line.split("resume with: python -m pipeline ")[1].split()
    result = run_pipeline(resume_command, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = store.only_run()
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.metrics["train/steps"] == 400
    assert resumed.data.metrics["eval/accuracy"] > 0.6
    assert f"at step {step}" in result.stdout + result.stderr  # "resumed from .../ckpt-<step> at step <step>"


def test_a_signal_during_training_stops_it_at_the_end_of_that_call(compose):
    """The signal comes mid-call (from the progress callback, between calls 6 and 9): the job stops after step 9,
    the model holding exactly 9 optimizer steps, so the checkpoint made then resumes a whole step."""
    config = compose(["train.epochs=2", "train.steps_per_call=3"])
    built = model.build_model(config.model, "float32", seed=0)
    optimizer = steps.make_optimizer("float32", config.train.learning_rate)

    def progress(step, *_):
        if step == 6:
            signal.raise_signal(signal.SIGUSR1)

    with preemption.handling_signals(), pytest.raises(preemption.JobStopped) as stopped:
        train.train(built, tiny_datasets(), config.train, "float32", optimizer=optimizer, progress=progress)
    assert (stopped.value.step, stopped.value.name, stopped.value.exit_code) == (9, "SIGUSR1", 138)
    assert int(optimizer.iterations.numpy()) == 9 and stopped.value.elapsed_s > 0
    # The clean-up's deadline (it would end the process) is called off once the run is ended.
    assert not [thread for thread in threading.enumerate() if isinstance(thread, threading.Timer) and thread.is_alive()]
