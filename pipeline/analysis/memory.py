"""The report's memory: tensor peaks and step memory against float32 in words, the largest batch that
fits a budget, and two plots (step peak against batch size; where a step's memory goes, estimated).

Tensor memory is what TensorFlow's allocator holds (train/peak_tensor_mb), on a CPU as on a GPU; the
process's resident set (train/peak_rss_mb) is mostly the runtime and the dataset and does not move
with the policy, so the report leaves it out.
"""

import pathlib

from pipeline.core import precision

METRICS = {  # report column -> MLflow metric
    "peak_tensor_mb": "train/peak_tensor_mb",
    "step_transient_mb": "train/step_transient_mb",
    "max_batch": "memory/max_batch",
    "max_batch_examples_per_sec": "memory/max_batch_examples_per_sec",
}
ESTIMATE_PARTS = ("parameters", "optimizer_slots", "weight_copies", "gradients", "activations")


def estimate_of(metrics: dict) -> dict[str, float] | None:
    """A job's logged estimate (MiB per part), or None where it logged none."""
    parts = {part: metrics.get(f"memory/estimate/{part}_mb") for part in ESTIMATE_PARTS}
    return parts if None not in parts.values() else None


def sentences(rows: list[dict]) -> list[str]:
    """Per reduced-precision configuration with a float32 partner: its step memory and its largest batch."""
    said = []
    references = {(row["model"], row["batch_size"], row["learning_rate"]): row for row in rows
                  if precision.is_reference(row["policy"]) and row["status"] == "FINISHED"}
    for row in rows:
        reference = references.get((row["model"], row["batch_size"], row["learning_rate"]))
        if precision.is_reference(row["policy"]) or reference is None:
            continue
        mode = f" ({row['jit_compile']})" if row.get("jit_compile") else ""
        if row.get("step_memory_vs_float32") is not None:
            text = (f"{row['policy']} uses {row['step_memory_vs_float32']:.2f}x {reference['policy']}'s step memory "
                    f"at batch {row['batch_size']}{mode}")
            if row.get("step_memory_low") is not None:
                text += f" (95% CI {row['step_memory_low']:.2f}..{row['step_memory_high']:.2f}x)"
            said.append(text + f", {row['model']}: tensor peak {_mib(row['peak_tensor_mb'])} MiB against "
                               f"{_mib(reference['peak_tensor_mb'])}")
        if row.get("max_batch") and reference.get("max_batch"):
            ratio = row["max_batch"] / reference["max_batch"]
            said.append(f"{row['policy']} fits batch {row['max_batch']:,.0f}{mode}, {ratio:.2f}x "
                        f"{reference['policy']}'s {reference['max_batch']:,.0f}, {row['model']}"
                        + _per_example(row, reference))
    return said


def _mib(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _per_example(row: dict, reference: dict) -> str:
    if not row.get("max_batch_examples_per_sec") or not reference.get("max_batch_examples_per_sec"):
        return ""
    return (f"; at those batches {row['max_batch_examples_per_sec'] / reference['max_batch_examples_per_sec']:.2f}x "
            "the examples per second")


def plot(pyplot, rows: list[dict], output_dir: pathlib.Path, save) -> list[pathlib.Path]:
    """Step peak against batch size per policy (its slope: activation bytes per example), and the estimate's
    parts per configuration as stacked bars beside the measured step transient."""
    finished = [row for row in rows if row["status"] == "FINISHED"]
    paths = []
    measured = [row for row in finished if row.get("peak_tensor_mb") is not None]
    if measured:
        figure, axes = pyplot.subplots(figsize=(7, 4.5))
        for model, policy in sorted({(row["model"], row["policy"]) for row in measured}):
            points = sorted((row["batch_size"], row["peak_tensor_mb"]) for row in measured
                            if (row["model"], row["policy"]) == (model, policy))
            axes.plot(*zip(*points), marker="o", label=f"{model} {policy}")
        axes.set(xlabel="batch size", ylabel="tensor peak (MiB)", title="training step peak vs batch size")
        paths.append(save(figure, axes, output_dir / "tensor_peak_vs_batch_size.png"))
    estimated = [row for row in measured if row.get("memory_estimate")]
    if estimated:
        figure, axes = pyplot.subplots(figsize=(max(6.0, 1.2 * len(estimated) + 2), 4.5))
        names = [f"{row['model']} {row['policy']}\nbs{row['batch_size']}" for row in estimated]
        bottoms = [0.0] * len(estimated)
        for part in ESTIMATE_PARTS:
            heights = [row["memory_estimate"][part] for row in estimated]
            axes.bar(names, heights, bottom=bottoms, label=part.replace("_", " "))
            bottoms = [bottom + height for bottom, height in zip(bottoms, heights)]
        resident = [row["memory_estimate"]["parameters"] + row["memory_estimate"]["optimizer_slots"]
                    for row in estimated]
        axes.scatter(names, [base + row["step_transient_mb"] for base, row in zip(resident, estimated)],
                     color="black", marker="_", s=400, zorder=3,
                     label="measured (weights + optimizer + step transient)")
        axes.set(ylabel="MiB", title="where a training step's memory goes (estimate) and what was measured")
        paths.append(save(figure, axes, output_dir / "memory_estimate.png"))
    return paths
