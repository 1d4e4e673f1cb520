"""Precision policies: setting one for a job, and saying whether the hardware supports it."""

import keras

from pipeline.config import Policy

# CPU flags (from /proc/cpuinfo) that give native arithmetic for each reduced dtype.
CPU_FLAGS = {
    "mixed_float16": ("avx512_fp16", "amx_fp16"),
    "mixed_bfloat16": ("avx512_bf16", "amx_bf16"),
}
# Minimum CUDA compute capability with fast arithmetic in each reduced dtype.
_GPU_CAPABILITY = {"mixed_float16": (7, 0), "mixed_bfloat16": (8, 0)}


def set_precision_policy(policy: str) -> keras.DTypePolicy:
    """Starts a fresh Keras session under `policy`, before any layer of the job is built.

    `clear_session` resets the global policy to float32, so it must come first: the other
    order would silently train every job after the first in float32.

    Raises:
        ValueError: `policy` is not a Policy.
    """
    if policy not in list(Policy):
        raise ValueError(f"precision.policy={policy!r} is not a known policy; use one of {', '.join(Policy)}")
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(policy)
    return keras.mixed_precision.global_policy()


def hardware_support(policy: str, gpu_capability: tuple[int, int] | None, cpu_flags: set[str]) -> tuple[bool, str]:
    """Says whether the device the job runs on has native arithmetic for `policy`'s compute dtype.

    Args:
        policy: a Policy.
        gpu_capability: the first GPU's compute capability, or None when training on the CPU.
        cpu_flags: the CPU's feature flags, as in /proc/cpuinfo.

    Returns:
        (supported, a sentence for the user).
    """
    if policy == "float32":
        return True, "float32 runs natively everywhere"
    if gpu_capability is not None:
        needed = _GPU_CAPABILITY[policy]
        supported = gpu_capability >= needed
        verdict = "has" if supported else "lacks"
        return supported, (
            f"GPU compute capability {gpu_capability[0]}.{gpu_capability[1]} {verdict} fast {policy} "
            f"arithmetic (needs {needed[0]}.{needed[1]}+)"
        )
    found = [flag for flag in CPU_FLAGS[policy] if flag in cpu_flags]
    if found:
        return True, f"CPU has {'/'.join(found)}: {policy} runs in hardware"
    slowdown = " and runs several times slower than float32" if policy == "mixed_float16" else ""
    return False, (
        f"CPU lacks {' and '.join(CPU_FLAGS[policy])}: {policy} is emulated{slowdown}; "
        "its speed figures here say nothing about a GPU"
    )
