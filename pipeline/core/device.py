"""What the job runs on: device description, CPU flags, peak memory (GPU when there is one) and memory in use."""

import pathlib
import platform
import resource

import tensorflow as tf

_PROC_SELF = pathlib.Path("/proc/self")


def describe_device() -> dict[str, str]:
    """Tags naming the CPU, the first GPU (when present) and the TensorFlow and Keras versions."""
    import keras

    tags = {
        "device.cpu": _cpu_model(),
        "device.type": "CPU",
        "version.tensorflow": tf.__version__,
        "version.keras": keras.__version__,
        # On Ampere and later GPUs "float32" matmuls run in TF32 while this is on (TensorFlow's default).
        "precision.tf32_enabled": str(tf.config.experimental.tensor_float_32_execution_enabled()).lower(),
    }
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        tags["device.type"] = "GPU"
        tags["device.gpu"] = details.get("device_name", "unknown GPU")
        tags["device.gpu_count"] = str(len(gpus))
        capability = details.get("compute_capability")
        if capability:
            tags["device.gpu_compute_capability"] = f"{capability[0]}.{capability[1]}"
    return tags


def gpu_compute_capability() -> tuple[int, int] | None:
    """The first GPU's compute capability, or None when TensorFlow sees no GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
    return tuple(capability) if capability else (0, 0)


def read_cpu_flags() -> set[str]:
    """The CPU's feature flags on Linux, empty elsewhere."""
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def reset_peak_memory() -> None:
    """Starts a new peak-memory window, so one job's figure excludes earlier jobs in the process."""
    if tf.config.list_physical_devices("GPU"):
        tf.config.experimental.reset_memory_stats("GPU:0")
        return
    clear_refs = _PROC_SELF / "clear_refs"
    if clear_refs.exists():
        try:
            clear_refs.write_text("5")  # Linux: resets the process's peak RSS (VmHWM)
        except OSError:
            pass  # not allowed here; the peak then covers the whole process


def read_peak_memory_mb() -> tuple[float, str]:
    """Peak memory since reset_peak_memory, in MiB, and where it comes from (gpu or host_rss)."""
    if tf.config.list_physical_devices("GPU"):
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, "gpu"
    return read_peak_rss_mb(), "host_rss"


def tensor_device() -> str:
    """Where the job's tensors live, for TensorFlow's allocator statistics: the first GPU, else the CPU."""
    return "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"


def tensor_devices(strategy=None) -> list[str]:
    """The allocators a job's tensors use: each GPU of its strategy (each has its own), else tensor_device().
    Logical CPU devices share the process's one CPU allocator, so a CPU strategy counts once."""
    if strategy is not None and tf.config.list_physical_devices("GPU"):
        gpus = [name.split("device:")[-1] for name in strategy.extended.worker_devices if "GPU" in name.upper()]
        if gpus:
            return gpus
    return [tensor_device()]


def reset_tensor_peak(*devices: str) -> None:
    for name in devices:
        tf.config.experimental.reset_memory_stats(name)


def tensor_memory_mb(device: str) -> tuple[float, float]:
    """(MiB of tensors allocated now, the most allocated since reset_tensor_peak) in TensorFlow's allocator on
    `device`: the same figures on a GPU and on a CPU (where the BFC allocator must be on: importing pipeline
    turns it on), independent of the runtime's and the dataset's own memory."""
    info = tf.config.experimental.get_memory_info(device)
    return info["current"] / 2**20, info["peak"] / 2**20


def tensor_peak_mb(devices) -> float:
    """The allocators' peaks since reset_tensor_peak, summed over `devices` (each GPU has its own)."""
    return sum(tensor_memory_mb(name)[1] for name in devices)


def read_peak_rss_mb() -> float:
    """The process's peak resident set since reset_peak_memory (on a GPU too), in MiB."""
    peak = _process_status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_in_use_mb() -> dict[str, float]:
    """What the process holds now, not its high-water mark: its resident set, and the bytes its tensors
    occupy in TensorFlow's allocator (GPU:0 on a GPU, else CPU:0; zero on a CPU unless the BFC allocator is
    on, which importing pipeline arranges). Logged at each job's end, a sweep's leak shows as a slope."""
    in_use = {"tensor_mb": tensor_memory_mb(tensor_device())[0]}
    resident = _process_status_mb("VmRSS")
    if resident is not None:
        in_use["rss_mb"] = resident
    return in_use


def _process_status_mb(field: str) -> float | None:
    """A kB figure of /proc/self/status (Linux) in MiB; None where there is no such file."""
    status = _PROC_SELF / "status"
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return None


def _cpu_model() -> str:
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
