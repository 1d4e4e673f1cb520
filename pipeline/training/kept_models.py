"""Models kept across the jobs of one process, with their compiled training calls.

A sweep's jobs that train the same model under the same policy take an earlier job's model and
optimizer objects back, reset to their own initial weights and a fresh optimizer state, with the
calls compiled for them: they then reuse compiled programs instead of adding new ones that
TensorFlow never frees (steps.Calls). What is learned is the same: the same initial values, the
same programs.
"""

import collections
import json

from omegaconf import OmegaConf

from pipeline.core import distribute, model
from pipeline.training import steps

KEPT = 8  # models (with their compiled calls) kept per process: a sweep's distinct models and policies
_kept: collections.OrderedDict[str, tuple] = collections.OrderedDict()


def build_or_reuse(model_config, policy: str, seed: int, learning_rate: float, strategy=None) -> tuple:
    """The job's model (its initial weights from `seed`), a fresh optimizer, and their compiled calls
    (None under a strategy, where a job has its process to itself and nothing is kept)."""
    built = model.build_model(model_config, policy, seed=seed, strategy=strategy)
    if strategy is not None:
        with distribute.scope(strategy):
            return built, steps.make_optimizer(policy, learning_rate), None
    key = json.dumps([OmegaConf.to_container(model_config, resolve=True), policy], sort_keys=True)
    if key not in _kept:
        optimizer = steps.make_optimizer(policy, learning_rate)
        optimizer.build(built.trainable_variables)
        _kept[key] = (built, optimizer, [variable.numpy() for variable in optimizer.variables],
                      steps.Calls(built, optimizer))
        while len(_kept) > KEPT:
            _kept.popitem(last=False)
        return built, optimizer, _kept[key][3]
    _kept.move_to_end(key)
    kept, optimizer, initial_state, calls = _kept[key]
    kept.set_weights(built.get_weights())
    for variable, value in zip(optimizer.variables, initial_state):
        variable.assign(value)
    optimizer.learning_rate = learning_rate
    return kept, optimizer, calls
