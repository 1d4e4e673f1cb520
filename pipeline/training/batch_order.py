"""Which examples each optimizer step takes: a seeded order per epoch, cut into batches."""

import numpy as np
import tensorflow as tf


def epoch_order(example_count: int, seed: int, epoch: int) -> tf.Tensor:
    """The shuffled example order of one epoch: a function of seed and epoch alone, so resumable."""
    return tf.constant(np.random.default_rng([seed, epoch]).permutation(example_count).astype(np.int32))


class BatchOrder:
    """Which examples each optimizer step takes: epoch by epoch, each epoch's order batch by batch.

    A call may run across the end of an epoch, so every call but the last takes steps_per_call
    steps: each distinct step count is a separate compiled program.
    """

    def __init__(self, example_count: int, batch_size: int, batch_shape: tuple[int, ...], seed: int) -> None:
        self.example_count, self.batch_size, self.batch_shape, self.seed = example_count, batch_size, batch_shape, seed
        self.steps_per_epoch = example_count // batch_size
        self._orders: dict[int, tf.Tensor] = {}

    def indices(self, step: int, step_count: int) -> tf.Tensor:
        """Example indices of steps step+1 .. step+step_count, shaped (step_count, *batch_shape)."""
        pieces, first_step, remaining = [], step, step_count
        while remaining:
            epoch, first_batch = divmod(first_step, self.steps_per_epoch)
            taken = min(remaining, self.steps_per_epoch - first_batch)
            pieces.append(self._order(epoch)[first_batch * self.batch_size : (first_batch + taken) * self.batch_size])
            first_step, remaining = first_step + taken, remaining - taken
        return tf.reshape(tf.concat(pieces, axis=0), (step_count, *self.batch_shape))

    def _order(self, epoch: int) -> tf.Tensor:
        if epoch not in self._orders:
            self._orders = {kept: order for kept, order in self._orders.items() if kept == epoch - 1}
            self._orders[epoch] = epoch_order(self.example_count, self.seed, epoch)
        return self._orders[epoch]
