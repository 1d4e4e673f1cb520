"""An independent reading of one training step's memory, for tests/test_memory_e2e.py:

    python tests/memory_probe.py <model> <policy> <batch size> <jit mode> <IDX folder>

Builds the model and its compiled training call as a job does, then reads TensorFlow's allocator
around single calls itself (none of the train stage's bookkeeping): prints, as JSON, what each of STEPS
steps after the compiling one allocated over what was allocated just before it, and their median.
"""

import json
import statistics
import sys

import numpy as np

import pipeline  # noqa: F401  (turns the CPU allocator's statistics on before TensorFlow starts)
from pipeline.core import data, model
from pipeline.core.config import JitCompile, compose
from pipeline.training import steps

STEPS = 30


def main(model_name: str, policy: str, batch_size: int, jit_compile: str, idx_dir: str) -> None:
    import tensorflow as tf

    config = compose([f"model={model_name}"])
    built = model.build_model(config.model, policy, seed=0)
    optimizer = steps.make_optimizer(policy, 1e-3)
    optimizer.build(built.trainable_variables)
    split = data.read_idx_split(idx_dir, "train")
    call = steps.Calls(built, optimizer).bound(JitCompile(jit_compile), steps.device_split(split))
    order = np.random.default_rng(0).permutation(len(split.labels)).astype(np.int32)
    transients = []
    for step in range(STEPS + 1):
        indices = tf.constant(order[step * batch_size:(step + 1) * batch_size][None, :])
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        tf.config.experimental.reset_memory_stats("CPU:0")
        call(indices).numpy()
        transients.append((tf.config.experimental.get_memory_info("CPU:0")["peak"] - before) / 2**20)
    timed = transients[1:]  # the first call compiles
    print(json.dumps({"step_transient_mb": statistics.median(timed), "step_transients_mb": timed}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
