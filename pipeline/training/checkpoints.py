"""Training checkpoints: model, optimizer (with its loss-scale state), the step and the training clock, every N
steps and when a signal stops the job."""

import logging

import tensorflow as tf

from pipeline import PipelineError
from pipeline.core import files

logger = logging.getLogger("pipeline")


class CheckpointError(PipelineError):
    """A checkpoint could not be written (a full or read-only disk) or read back (a truncated or corrupt file)."""


class Checkpointer:
    """Saves every `every_steps` steps into `directory`, and restores the latest save."""

    def __init__(self, model, optimizer, directory: str, every_steps: int | None, keep: int = 2) -> None:
        if not optimizer.built:
            optimizer.build(model.trainable_variables)  # its variables must exist to be restored into
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.elapsed_s = tf.Variable(0.0, dtype=tf.float64, trainable=False)  # time to target spans resumes
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=self.step, elapsed_s=self.elapsed_s)
        self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=keep)
        self.every_steps = every_steps

    def save_if_due(self, step: int, elapsed_s: float = 0.0) -> None:
        """Saves at every `every_steps`-th step (`elapsed_s`: the training clock then).

        Raises:
            CheckpointError: the folder cannot take it (full, read-only), named with the step.
        """
        if self.every_steps and step % self.every_steps == 0:
            self.save(step, elapsed_s)

    def save(self, step: int, elapsed_s: float = 0.0) -> None:
        """Saves now, whatever the step (a signal is stopping the job).

        Raises:
            CheckpointError: as save_if_due.
        """
        self.step.assign(step)
        self.elapsed_s.assign(elapsed_s)
        try:
            self.manager.save(checkpoint_number=step)
        except (OSError, tf.errors.OpError) as error:
            raise CheckpointError(f"train.checkpoint_dir={self.manager.directory}: cannot write the checkpoint "
                                  f"of step {step} ({files.reason(error)}); "
                                  f"{files.fix('train.checkpoint_dir', error)}") from None

    def restore_latest(self) -> tuple[int, float]:
        """Restores the latest checkpoint; returns its step and the training clock's seconds then.

        Raises:
            CheckpointError: the folder holds no checkpoint, or the latest is truncated, corrupt or of another model.
        """
        latest = self.manager.latest_checkpoint
        if latest is None:
            raise CheckpointError(f"no checkpoint in {self.manager.directory}: nothing to resume from; rerun the job "
                                  "without train.resume (with train.checkpoint_every_steps set, it keeps checkpoints)")
        try:
            self.manager.checkpoint.restore(latest).assert_existing_objects_matched()
        except Exception as error:  # TensorFlow's reader fails a cut or corrupt file in many types (IndexError too)
            raise CheckpointError(f"train.checkpoint_dir={self.manager.directory}: {latest} cannot be read "
                                  f"({files.reason(error)}); delete its files to resume from the checkpoint before "
                                  "it, or rerun the job without train.resume") from None
        logger.info("resumed from %s at step %d", latest, int(self.step.numpy()))
        return int(self.step.numpy()), float(self.elapsed_s.numpy())
