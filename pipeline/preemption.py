"""Preemption, as schedulers expect it: SIGTERM, SIGINT or SIGUSR1 saves a checkpoint and ends the job.

A scheduler (SLURM preemption, a reclaimed spot instance, `scancel`) sends SIGTERM and kills the
process hard after a grace period (SLURM's default: 30 s). During training the signal is taken at the
end of the current compiled call, so the checkpoint holds a whole step; elsewhere it stops the job at
once. The job then ends its run KILLED, prints one line and exits with 128 + the signal's number. The
clean-up has CLEAN_UP_S seconds; a second signal, or running out of them, ends the process at once.

Under submitit the launcher's own preemption signal (SIGUSR2 by default) is handled the same way, and
then handed to submitit, which requeues the job: a job started in a folder where a preempted job left
its checkpoint (MARKER_FILE) continues that job's run.
"""

import contextlib
import json
import logging
import os
import pathlib
import signal
import sys
import threading

logger = logging.getLogger("pipeline")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
CLEAN_UP_S = 9.0
MARKER_FILE = "preempted.json"


class JobStopped(KeyboardInterrupt):
    """A signal stopped the job; `step` is the training step it stopped at (None outside training)."""

    def __init__(self, signum: int, step: int | None = None, elapsed_s: float = 0.0) -> None:
        super().__init__(f"signal {signum}")
        self.signum, self.step, self.elapsed_s = signum, step, elapsed_s  # elapsed_s: the training clock's
        # Set when the run went offline: MLflow's queue would hold the exit for its requests to the gone server.
        self.exit_at_once = False

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    received: int | None = None  # the first signal's number
    raised = False  # JobStopped was raised for it: the clean-up that follows must not raise it again
    deferring = False  # in the training loop: the signal is taken at the end of the current call
    previous: dict = {}  # the handlers ours replaced (submitit's requeue among them)
    deadline: threading.Timer | None = None  # ends the process if the clean-up after a signal outlasts CLEAN_UP_S


@contextlib.contextmanager
def handling_signals():
    """Installs the handlers for the duration of a job (in the main thread only; elsewhere nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = [*SIGNALS, *_submitit_signal()]
    _State.previous = {number: signal.signal(number, _handle) for number in signals}
    _State.received, _State.raised = None, False
    try:
        yield
    finally:
        for number, handler in _State.previous.items():
            signal.signal(number, handler)
        if _State.deadline is not None:  # the run is ended: what is left is a line and the exit
            _State.deadline.cancel()
            _State.deadline = None


@contextlib.contextmanager
def at_step_boundaries():
    """Within it, a signal does not interrupt a training call: `check` raises it at the call's end."""
    _State.deferring = True
    try:
        yield
    finally:
        _State.deferring = False


@contextlib.contextmanager
def deferred():
    """Within it, a signal waits for its end (writing a store must not be cut half-way), then stops the job."""
    was_deferring, _State.deferring = _State.deferring, True
    try:
        yield
    finally:
        _State.deferring = was_deferring
    if not was_deferring:
        _raise_once()


def check(step: int, elapsed_s: float) -> None:
    """Raises JobStopped at `step` (the training clock at `elapsed_s`) if a signal came during the call that
    ended there."""
    _raise_once(step, elapsed_s)


def _raise_once(step: int | None = None, elapsed_s: float = 0.0) -> None:
    if _State.received is not None and not _State.raised:
        _State.raised = True
        raise JobStopped(_State.received, step, elapsed_s)


def hand_over(stopped: JobStopped) -> None:
    """After the clean-up: submitit's own handler for its preemption signal (it requeues the job and exits);
    for any other signal, exits with 128 + its number."""
    previous = _State.previous.get(stopped.signum)
    if stopped.signum in _submitit_signal() and callable(previous):
        previous(stopped.signum, None)
    if stopped.exit_at_once:
        logging.shutdown()  # flushes the job's log file
        _exit_now(stopped.signum, None)
    raise SystemExit(stopped.exit_code)


def write_marker(checkpoint_dir, run_id: str, step: int, signum: int) -> None:
    """Notes in the checkpoint folder which run a requeued job continues."""
    path = pathlib.Path(checkpoint_dir) / MARKER_FILE
    path.write_text(json.dumps({"run_id": run_id, "step": step, "signal": signal.Signals(signum).name}))


def preempted_run_id(checkpoint_dir) -> str | None:
    """The run a preempted job left a checkpoint of in `checkpoint_dir` (None: there is none), said in a line."""
    try:
        preempted = json.loads((pathlib.Path(checkpoint_dir) / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    logger.info("continuing run %s, stopped by %s at step %d (its checkpoint is in %s)", preempted["run_id"],
                preempted["signal"], preempted["step"], checkpoint_dir)
    return preempted["run_id"]


def stopped_line(run_name: str, stopped: JobStopped, run_id: str | None, offline_dir, overrides: list[str]) -> str:
    """The one line a signal leaves: which, at what step, where the run is, and the command that resumes it."""
    where = f"at step {stopped.step:,}, checkpoint saved" if stopped.step is not None else "outside training"
    kept = f"; kept offline in {offline_dir} (python -m pipeline.sync uploads it)" if offline_dir else ""
    run_id = run_id or "<its id on the server, after pipeline.sync>"
    command = " ".join(["python -m pipeline", *[item for item in overrides if not item.startswith("train.resume=")],
                        f"train.resume={run_id}"])
    return f"{run_name}: stopped by {stopped.name} {where}; run {run_id} KILLED{kept}; resume with: {command}"


def clear_marker(checkpoint_dir) -> None:
    (pathlib.Path(checkpoint_dir) / MARKER_FILE).unlink(missing_ok=True)


def _handle(signum, frame) -> None:
    if _State.received is not None:  # a second signal: the user or scheduler wants it gone now
        _exit_now(signum)
    _State.received = signum
    _State.deadline = threading.Timer(CLEAN_UP_S, _exit_now, args=(signum, "the clean-up took too long"))
    _State.deadline.daemon = True
    _State.deadline.start()
    if not _State.deferring:
        _raise_once()


def _exit_now(signum: int, why: str | None = "a second signal") -> None:
    if why:
        logger.error("%s: exiting now (%s)", signal.Signals(signum).name, why)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(128 + signum)


def _submitit_signal() -> list[int]:
    """submitit's preemption signal when submitit runs this process (its handler is installed), else nothing."""
    number = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
    handler = signal.getsignal(number) if number else None
    if handler is _handle:
        return [number]  # already ours: submitit's is in _State.previous
    return [number] if type(getattr(handler, "__self__", None)).__module__.startswith("submitit") else []
