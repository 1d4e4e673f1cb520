"""What every command (`python -m pipeline`, `.report`, `.promote`, `.infer_model`) shares: failure handling.

A problem the user can fix (a PipelineError) is one line and exit 1, never a traceback; anything
else is a bug and keeps its traceback. A job of a -m sweep returns instead of exiting, so the
other jobs run; its run is already FAILED in MLflow and the sweep's report lists it. A signal
(pipeline.preemption) ends the command, sweep or not, with 128 + its number.
"""

import functools
import logging

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from pipeline import PipelineError, console, preemption

logger = logging.getLogger("pipeline")


def reporting_errors(command):
    """Decorates a Hydra task function (put it under @hydra.main) with the failure handling above."""

    @functools.wraps(command)
    def run_command(config):
        hydra_config = HydraConfig.get()
        console.setup(verbose=bool(config.get("verbose")) or bool(hydra_config.verbose))
        in_sweep = hydra_config.mode == RunMode.MULTIRUN
        try:
            return command(config)
        except preemption.JobStopped as stopped:  # its run is KILLED and its line printed: no traceback
            preemption.hand_over(stopped)
        except Exception as error:
            if isinstance(error, PipelineError):
                logger.error("%s", error)  # the message says what to fix; a traceback would bury it
            elif in_sweep:
                logger.exception("job failed")
            else:
                raise
            if in_sweep:
                return None
            raise SystemExit(1) from None

    return run_command
