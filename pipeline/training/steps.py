"""Compiled training steps: the optimizer with loss scaling, one step, and calls of many steps.

make_call serves one device; make_distributed_call the replicas of a tf.distribute strategy.
Both take each call's batches as example indices into the device-resident split.
"""

import functools

import keras
import tensorflow as tf

from pipeline.core import data, precision
from pipeline.core.config import JitCompile


class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras's dynamic loss scaling, with one skip-or-apply decision across all replicas.

    Keras checks each replica's own gradients for inf/NaN and, under a strategy that merges
    calls, acts on the first replica's verdict: a step that overflowed on another replica would
    then apply inf to every weight (and workers could disagree and hang in the all-reduce). Here
    the replicas count their non-finite gradients together first, so all skip or all apply.
    """

    def check_finite(self, grads):
        finite = super().check_finite(grads)
        replica_context = tf.distribute.get_replica_context()
        if replica_context is None or replica_context.num_replicas_in_sync == 1:
            return finite
        non_finite_replicas = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
        return tf.equal(non_finite_replicas, 0.0)


class Adam(keras.optimizers.Adam):
    """Keras's Adam, without a cross-replica sum when there is one replica and no strategy.

    Keras sums gradients with the replica context's all_reduce even then, and TensorFlow wraps that
    all_reduce in a custom gradient, which registers a gradient function in a process-wide registry
    that is never emptied: each traced training call (its graph, and anything it captures) then stays
    in memory for the life of the process, tens of MiB per job of a sweep. One replica's sum is its
    own gradient, so the sum is skipped there.
    """

    def _all_reduce_sum_gradients(self, grads_and_vars):
        if not tf.distribute.has_strategy() and tf.distribute.get_replica_context().num_replicas_in_sync == 1:
            return list(grads_and_vars)
        return super()._all_reduce_sum_gradients(grads_and_vars)


def make_optimizer(policy: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """Adam, wrapped in dynamic loss scaling where the policy's spec asks for it (float16's narrow range).

    Under a strategy, call it inside strategy.scope() so its variables are mirrored.
    """
    optimizer = Adam(learning_rate=learning_rate)
    if precision.spec(policy).loss_scaling:
        optimizer = LossScaleOptimizer(optimizer)
    return optimizer


def _loss_and_gradients(model, optimizer, loss_function, images, labels, global_batch_size):
    """The batch's share of the global mean loss (unscaled) and the gradients of its scaled value."""
    with tf.GradientTape() as tape:
        per_example_loss = loss_function(labels, model(images, training=True))
        loss = tf.nn.compute_average_loss(per_example_loss, global_batch_size=global_batch_size)
        # Identity for plain optimizers; multiplies by the dynamic scale under float16 so
        # small gradients survive the float16 backward pass.
        scaled_loss = optimizer.scale_loss(loss)
    return loss, tape.gradient(scaled_loss, model.trainable_variables)


def make_step(model: keras.Model, optimizer):
    """One optimizer step on a batch; returns the unscaled float32 loss. Not compiled by itself."""
    loss_function = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    if not optimizer.built:  # a restored checkpoint's optimizer is already built
        optimizer.build(model.trainable_variables)

    def train_step(images, labels):
        loss, gradients = _loss_and_gradients(model, optimizer, loss_function, images, labels, tf.shape(labels)[0])
        # LossScaleOptimizer unscales, and skips the update (halving the scale) on inf/NaN.
        optimizer.apply(gradients, model.trainable_variables)
        return loss

    return train_step


def device_split(split: data.Split, strategy=None) -> tuple:
    """The training split on the device, once per job: a uint8 image tensor and its labels (one copy per
    replica under a strategy). Calls take them as arguments rather than capture them: a captured
    tensor lives as long as the traced graph, and TensorFlow keeps traced graphs past the job."""
    if strategy is None:
        return tf.constant(split.images), tf.constant(split.labels)
    return (strategy.experimental_distribute_values_from_function(lambda _: tf.constant(split.images)),
            strategy.experimental_distribute_values_from_function(lambda _: tf.constant(split.labels)))


def make_call(model: keras.Model, optimizer, jit_compile: JitCompile):
    """A compiled call `train_call(images, labels, batch_indices)` running one optimizer step per row of
    `batch_indices` (steps, batch size), on the device-resident split (device_split).

    `jit_compile`: "false" (TensorFlow's graph executor), "step" (XLA compiles each step, the
    loop of steps runs in the graph executor, as Keras's fit does) or "true" (XLA compiles the
    whole call, loop included: fastest for small dense models, much slower for convolutions,
    which XLA on CPU runs poorly inside a loop).

    XLA needs the trip count and slice sizes static, and compiles again for every distinct value
    of anything that sets them; so the call takes its batches' example indices as one tensor,
    cut from the epoch's order outside. Each distinct step count (steps_per_call, and the last,
    shorter call) compiles once.
    """
    step = make_step(model, optimizer)
    if jit_compile == JitCompile.step:
        step = tf.function(step, jit_compile=True)

    @tf.function(jit_compile=jit_compile == JitCompile.true)
    def train_call(images, labels, batch_indices):
        return _each_step(batch_indices, lambda batch: step(data.normalize(tf.gather(images, batch)),
                                                            tf.gather(labels, batch)))

    return train_call


def make_distributed_call(model: keras.Model, optimizer, jit_compile: JitCompile, strategy):
    """make_call under a tf.distribute strategy: `batch_indices` is (steps, replicas, per replica).

    Every replica holds the whole split on its device and takes its own row of each step's
    indices; its loss is its share of the global batch mean, so the gradients the optimizer sums
    across replicas are the global batch's. With jit_compile "step", XLA compiles each replica's
    forward and backward pass; the all-reduce and the update run outside it.
    """
    loss_function = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    if not optimizer.built:
        with strategy.scope():
            optimizer.build(model.trainable_variables)

    def loss_and_gradients(images, labels, global_batch_size):
        return _loss_and_gradients(model, optimizer, loss_function, images, labels, global_batch_size)

    if jit_compile == JitCompile.step:
        loss_and_gradients = tf.function(loss_and_gradients, jit_compile=True)

    def replica_step(images, labels, step_indices):
        replica_indices = tf.gather(step_indices, tf.distribute.get_replica_context().replica_id_in_sync_group)
        global_batch_size = step_indices.shape[0] * step_indices.shape[1]
        loss, gradients = loss_and_gradients(
            data.normalize(tf.gather(images, replica_indices)), tf.gather(labels, replica_indices), global_batch_size)
        optimizer.apply(gradients, model.trainable_variables)  # sums the gradients across replicas first
        return loss

    @tf.function
    def train_call(images, labels, batch_indices):
        return _each_step(batch_indices, lambda step_indices: strategy.reduce(
            tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(images, labels, step_indices)), axis=None))

    return train_call


class Calls:
    """The compiled training calls of one model and optimizer, by mode, with the shapes each has
    compiled. A sweep whose jobs train the same model again keeps them (kept_models.py): each program
    then compiles once per process. XLA's compilation cache never evicts, so a program compiled anew
    for every job would grow the process by several MiB a job (tensorflow/tensorflow#64170).
    """

    def __init__(self, model: keras.Model, optimizer, strategy=None) -> None:
        self.model, self.optimizer, self.strategy = model, optimizer, strategy
        self._functions: dict[JitCompile, object] = {}
        self.compiled: dict[JitCompile, set[tuple]] = {}  # (step count, batch shape) each mode's call has compiled
        self._count_correct = None

    def bound(self, mode: JitCompile, split_on_device: tuple):
        """The call of `mode` bound to the device-resident split: it then takes batch indices alone."""
        if mode not in self._functions:
            self._functions[mode] = (make_call(self.model, self.optimizer, mode) if self.strategy is None else
                                     make_distributed_call(self.model, self.optimizer, mode, self.strategy))
            self.compiled[mode] = set()
        return functools.partial(self._functions[mode], *split_on_device)


    def accuracy(self, split_on_device: tuple, batch_size: int) -> tuple[float, bool]:
        """The model's accuracy in inference mode over a device-resident split (device_split), in one compiled
        call (batches of `batch_size`, so it holds no more than a training step would); and whether this call
        traced the evaluation program."""
        traced = self._count_correct is None
        if traced:  # kept with the model: a sweep's later jobs evaluate with the same program
            self._count_correct = _count_correct_of(self.model)
        images, labels = split_on_device
        correct = self._count_correct(images, labels, tf.constant(batch_size))
        return int(correct.numpy()) / int(labels.shape[0]), traced


def _count_correct_of(model: keras.Model):
    @tf.function
    def count_correct(images, labels, batch_size):
        count = tf.shape(labels)[0]
        correct = tf.constant(0, tf.int64)
        for start in tf.range(0, count, batch_size):  # a graph loop: one host sync for the whole split
            logits = model(data.normalize(images[start : start + batch_size]), training=False)
            predictions = tf.argmax(logits, axis=-1)
            correct += tf.reduce_sum(tf.cast(predictions == labels[start : start + batch_size], tf.int64))
        return correct

    return count_correct


def _each_step(batch_indices, run_step):
    """Runs `run_step` on each row of `batch_indices` in a graph loop; returns the steps' losses."""
    step_count = batch_indices.shape[0]
    losses = tf.TensorArray(tf.float32, size=step_count)
    for index in tf.range(step_count):
        losses = losses.write(index, run_step(tf.gather(batch_indices, index)))
    return losses.stack()
