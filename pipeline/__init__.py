"""Mixed-precision train -> evaluate -> export -> infer pipeline, swept by Hydra, tracked in MLflow."""

import os

# TensorFlow's CPU allocator keeps byte counts (tf.config.experimental.get_memory_info("CPU:0")) only when
# it is the BFC allocator, GPUs' default, chosen before TensorFlow starts: every entry point imports this
# package first. Without it a CPU job's tensor memory reads as zero.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")


class PipelineError(RuntimeError):
    """A problem the user can fix (missing data, a diverging run): reported as one line, exit 1."""
