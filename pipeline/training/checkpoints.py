"""Training checkpoints: model, optimizer (with its loss-scale state) and the step, every N steps."""

import logging

import tensorflow as tf

logger = logging.getLogger("pipeline")


class Checkpointer:
    """Saves every `every_steps` steps into `directory`, and restores the latest save."""

    def __init__(self, model, optimizer, directory: str, every_steps: int | None, keep: int = 2) -> None:
        if not optimizer.built:
            optimizer.build(model.trainable_variables)  # its variables must exist to be restored into
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=self.step)
        self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=keep)
        self.every_steps = every_steps

    def save_if_due(self, step: int) -> None:
        if self.every_steps and step % self.every_steps == 0:
            self.step.assign(step)
            self.manager.save(checkpoint_number=step)

    def restore_latest(self) -> int:
        """Restores the latest checkpoint; returns its step.

        Raises:
            FileNotFoundError: the directory holds no checkpoint.
        """
        latest = self.manager.latest_checkpoint
        if latest is None:
            raise FileNotFoundError(f"no checkpoint in {self.manager.directory}")
        self.manager.checkpoint.restore(latest).assert_existing_objects_matched()
        logger.info("resumed from %s at step %d", latest, int(self.step.numpy()))
        return int(self.step.numpy())
