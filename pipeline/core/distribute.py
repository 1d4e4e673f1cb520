"""Multi-device training: the tf.distribute strategy a job trains under, and which process is chief.

data.batch_size is the global batch: each replica takes an equal share of it, and the gradients
are summed across replicas, so N replicas take the same optimizer steps as one device would on
the same global batch (same learning rate, same seed, same data order).
"""

import contextlib
import json
import os

from pipeline import PipelineError
from pipeline.core.config import DistributeConfig

_strategies = {}  # one strategy per process and setting: MultiWorkerMirroredStrategy can only be made once


class DistributeError(PipelineError):
    """The strategy cannot be set up as configured (batch split, devices), or the cluster broke up."""


def is_chief(distribute_config: DistributeConfig) -> bool:
    """Whether this process records the job: every process but a multi-worker job's non-chief workers.

    The chief is the task of type chief, else worker 0, read from TF_CONFIG without TensorFlow.
    """
    if distribute_config.strategy != "multi_worker":
        return True
    cluster_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = cluster_config.get("task", {})
    if not task:
        return True
    has_chief = "chief" in cluster_config.get("cluster", {})
    return task.get("type") == "chief" or (not has_chief and task.get("type") == "worker" and task.get("index") == 0)


def make_strategy(distribute_config: DistributeConfig):
    """The tf.distribute strategy for distribute.strategy; None for `none` (one device, no strategy).

    Call it before any TensorFlow op runs in the process: MultiWorkerMirroredStrategy configures
    collective ops at start-up and refuses to afterwards.
    """
    name = str(distribute_config.strategy)
    if name == "none":
        return None
    import tensorflow as tf

    key = (name, tuple(distribute_config.devices or ()), distribute_config.logical_cpus)
    if key in _strategies:
        return _strategies[key]
    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy(devices=_mirrored_devices(distribute_config))
    else:
        implementation = {
            "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
            "ring": tf.distribute.experimental.CommunicationImplementation.RING,
            "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
        }[str(distribute_config.communication)]
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(implementation=implementation))
    _strategies[key] = strategy
    return strategy


def _mirrored_devices(distribute_config: DistributeConfig) -> list[str] | None:
    import tensorflow as tf

    if distribute_config.logical_cpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * distribute_config.logical_cpus)
        except RuntimeError as error:  # TensorFlow has already started its devices
            raise DistributeError(f"distribute.logical_cpus={distribute_config.logical_cpus} must be set before "
                                  f"TensorFlow starts; run it as a single job, not inside a sweep ({error})") from None
        return [device.name for device in tf.config.list_logical_devices("CPU")]
    return list(distribute_config.devices) if distribute_config.devices else None


def scope(strategy):
    """`strategy.scope()`, or no scope at all when there is no strategy (None)."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def replica_count(strategy) -> int:
    return strategy.num_replicas_in_sync if strategy is not None else 1


def replica_batch_size(strategy, global_batch_size: int) -> int:
    """Each replica's share of the global batch.

    Raises:
        DistributeError: the global batch does not split evenly.
    """
    replicas = replica_count(strategy)
    if global_batch_size % replicas:
        raise DistributeError(f"data.batch_size={global_batch_size} does not split evenly across {replicas} replicas; "
                              f"use a multiple of {replicas}")
    return global_batch_size // replicas


def describe(strategy, distribute_config: DistributeConfig) -> dict[str, str]:
    """Tags for the run: which strategy, how many replicas."""
    return {
        "distribute.strategy": str(distribute_config.strategy),
        "distribute.replicas": str(replica_count(strategy)),
    }


@contextlib.contextmanager
def reporting_lost_workers(distribute_config: DistributeConfig):
    """Turns TensorFlow's error for a multi-worker peer that died into one line saying what to do.

    The surviving workers' collective ops fail with UnavailableError once the coordination
    service misses the dead one's heartbeats (here about 10 s), which ends the chief's run FAILED.
    """
    try:
        yield
    except Exception as error:
        import tensorflow as tf

        cause = error if isinstance(error, tf.errors.UnavailableError) else error.__cause__
        if str(distribute_config.strategy) == "multi_worker" and isinstance(cause, tf.errors.UnavailableError):
            raise DistributeError("another worker of the cluster stopped or cannot be reached (its own log says "
                                  "why); start every worker's command again") from error
        raise
