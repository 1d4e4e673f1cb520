"""Precision policies: one spec per policy, setting one for a job, and whether the hardware supports it.

POLICIES is the one home of the policies: the config's allowed values, the optimizer's loss
scaling, the export's float32 rebuild, the report's reference and the benchmark all read it.
Adding a policy is one entry here and its file in conf/precision/. Keras is imported only when a
policy is set, so the config checks that read this table run before TensorFlow is imported.
"""

import dataclasses

REFERENCE = "float32"  # full precision: what every other policy is compared against, and what LiteRT converts


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """What a Keras precision policy computes in, stores in, needs and is compared against.

    Attributes:
        name: the Keras policy name (keras.mixed_precision.Policy), also the YAML file's name.
        compute_dtype: the dtype layers compute in (the float32 output layer excepted).
        variable_dtype: the dtype weights are kept in.
        loss_scaling: dynamic loss scaling, for compute dtypes whose narrow exponent range flushes
            small gradients to zero (float16).
        cpu_flags: /proc/cpuinfo flags that give native arithmetic in compute_dtype; () for everywhere.
        gpu_capability: the least CUDA compute capability with fast compute_dtype arithmetic; None for any.
        emulated_cost: what running without the hardware costs, said in the job's warning.
        reference: the policy a sweep's report compares this one against (the same model, batch and seed).
    """

    name: str
    compute_dtype: str
    variable_dtype: str
    loss_scaling: bool = False
    cpu_flags: tuple[str, ...] = ()
    gpu_capability: tuple[int, int] | None = None
    emulated_cost: str = ""
    reference: str = REFERENCE


POLICIES: dict[str, PolicySpec] = {spec.name: spec for spec in (
    PolicySpec("float32", compute_dtype="float32", variable_dtype="float32"),
    PolicySpec("mixed_float16", compute_dtype="float16", variable_dtype="float32", loss_scaling=True,
               cpu_flags=("avx512_fp16", "amx_fp16"), gpu_capability=(7, 0),
               emulated_cost=" and runs several times slower than float32"),
    PolicySpec("mixed_bfloat16", compute_dtype="bfloat16", variable_dtype="float32",
               cpu_flags=("avx512_bf16", "amx_bf16"), gpu_capability=(8, 0)),
)}


def spec(policy: str) -> PolicySpec:
    """The spec of `policy`.

    Raises:
        ValueError: `policy` is not in POLICIES.
    """
    try:
        return POLICIES[str(policy)]
    except KeyError:
        raise ValueError(f"precision.policy={str(policy)!r} is not a known policy; "
                         f"use one of {', '.join(POLICIES)}") from None


def reference_of(policy: str) -> str:
    """The policy `policy` is compared against; REFERENCE for a policy this version no longer knows
    (a run logged by an older one), so old sweeps still report."""
    return POLICIES[policy].reference if policy in POLICIES else REFERENCE


def is_reference(policy: str) -> bool:
    """Whether `policy` is its own reference: the row the others' ratios and differences are taken to."""
    return reference_of(policy) == policy


def set_precision_policy(policy: str):
    """Starts a fresh Keras session under `policy`, before any layer of the job is built.

    `clear_session` resets the global policy to float32, so it must come first: the other
    order would silently train every job after the first in float32.

    Raises:
        ValueError: `policy` is not in POLICIES.
    """
    import keras

    spec(policy)
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(policy)
    return keras.mixed_precision.global_policy()


def hardware_support(policy: str, gpu_capability: tuple[int, int] | None, cpu_flags: set[str]) -> tuple[bool, str]:
    """Says whether the device the job runs on has native arithmetic for `policy`'s compute dtype.

    Args:
        policy: a name in POLICIES.
        gpu_capability: the first GPU's compute capability, or None when training on the CPU.
        cpu_flags: the CPU's feature flags, as in /proc/cpuinfo.

    Returns:
        (supported, a sentence for the user).
    """
    policy_spec = spec(policy)
    needed = policy_spec.gpu_capability if gpu_capability is not None else policy_spec.cpu_flags
    if not needed:
        return True, f"{policy} runs natively everywhere"
    if gpu_capability is not None:
        supported = gpu_capability >= needed
        verdict = "has" if supported else "lacks"
        return supported, (
            f"GPU compute capability {gpu_capability[0]}.{gpu_capability[1]} {verdict} fast {policy} "
            f"arithmetic (needs {needed[0]}.{needed[1]}+)"
        )
    found = [flag for flag in policy_spec.cpu_flags if flag in cpu_flags]
    if found:
        return True, f"CPU has {'/'.join(found)}: {policy} runs in hardware"
    return False, (
        f"CPU lacks {' and '.join(policy_spec.cpu_flags)}: {policy} is emulated{policy_spec.emulated_cost}; "
        "its speed figures here say nothing about a GPU"
    )
