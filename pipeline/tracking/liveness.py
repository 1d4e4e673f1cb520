"""Runs whose process was killed hard: found and ended, so nothing stays RUNNING forever.

A process killed with SIGKILL (the kernel's out-of-memory killer, a scheduler's hard limit) cannot
end its own run. Every run records where it runs (host, process id, process start time); any later
command that opens the store ends the RUNNING runs whose process is gone from this host as KILLED,
with the reason as a tag, in every experiment of the store (a team keeps several in one). Runs on
other hosts are left alone: their processes cannot be seen here.
"""

import logging
import os
import socket

from mlflow.entities import RunStatus

from pipeline.tracking import pages

logger = logging.getLogger("pipeline")

HOST_TAG, PID_TAG, START_TAG = "process.host", "process.pid", "process.start_time"
REASON_TAG = "killed.reason"


def process_tags() -> dict[str, str]:
    """Where this process runs, as run tags; the start time tells a reused process id apart."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), START_TAG: _start_time(os.getpid()) or ""}


def end_runs_of_dead_processes(client) -> list[str]:
    """Ends as KILLED the store's RUNNING runs, in any experiment, whose process on this host is gone; returns
    their names. One search over every experiment finds them, however large the store."""
    if _start_time(os.getpid()) is None:
        return []  # no /proc here: liveness cannot be told, so nothing is ended
    host = socket.gethostname()
    running = pages.search_all_runs(client, pages.all_experiment_ids(client),
                                    f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'")
    ended = []
    for run in running:
        pid, start_time = run.data.tags.get(PID_TAG, ""), run.data.tags.get(START_TAG, "")
        if not pid.isdigit() or _alive(int(pid), start_time):
            continue
        client.set_tag(run.info.run_id, REASON_TAG, f"its process ({pid} on {host}) ended without ending the run: "
                                                    "killed hard (SIGKILL, out of memory, a scheduler's limit)")
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        ended.append(f"{run.info.run_name} ({run.info.run_id})")
    if ended:
        logger.warning("ended %d run(s) left RUNNING by a process that is gone, as KILLED: %s "
                       "(train.resume=<run id> continues a job from its last checkpoint)", len(ended), ", ".join(ended))
    return ended


def _alive(pid: int, start_time: str) -> bool:
    current = _start_time(pid)
    if current is None:
        return False
    return not start_time or current == start_time  # a different start time: the id was reused


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat), None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    except OSError:
        return None
    state, start_time = fields[0], fields[19]
    return None if state in ("Z", "X") else start_time
