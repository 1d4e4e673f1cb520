"""The deployment table: each exported format of each configuration, its size, accuracy against the
float32 SavedModel (paired by seed, with a 95 % interval where seeds repeat), parity and speed."""

import csv
import pathlib

from pipeline.analysis import plots, statistics
from pipeline.core import precision

FIGURES = ("size_bytes", "accuracy", "agreement", "latency_ms_p50", "examples_per_sec")
COLUMNS = ("model", "policy", "batch_size", "learning_rate", "format", "n", "size_bytes", "accuracy",
           "delta_accuracy_vs_float32_saved_model", "delta_low", "delta_high", "agreement", "latency_ms_p50",
           "examples_per_sec")


def deployment_rows(job_rows: list[dict]) -> list[dict]:
    """Per configuration and exported format: size, accuracy and its change against the float32
    SavedModel of the same model, batch size, rate and seed (with a 95 % interval where seeds
    repeat), agreement with the trained model, batch-1 latency and large-batch throughput."""
    baselines = {(job["model"], job["policy"], job["batch_size"], job["learning_rate"], job.get("seed")): job
                 for job in job_rows if precision.is_reference(job["policy"]) and job["status"] == "FINISHED"}
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for job in job_rows:
        for export_format, figures in (job.get("deployment") or {}).items():
            key = (job["model"], job["policy"], job["batch_size"], job["learning_rate"], export_format)
            groups.setdefault(key, []).append((job, figures))
    rows = []
    for (model, policy, batch_size, learning_rate, export_format), members in groups.items():
        row = {"model": model, "policy": policy, "batch_size": batch_size, "learning_rate": learning_rate,
               "format": export_format, "n": len(members)}
        for figure in FIGURES:
            estimate = statistics.mean_interval(figures[figure] for _, figures in members)
            row[figure] = estimate.mean if estimate else None
        reference = precision.reference_of(policy)
        partner = [(figures["accuracy"], baselines.get((model, reference, batch_size, learning_rate, job.get("seed"))))
                   for job, figures in members]
        delta = statistics.mean_interval(_difference(accuracy, (baseline or {}).get("deployment", {})
                                                     .get("saved_model", {}).get("accuracy"))
                                         for accuracy, baseline in partner)
        row["delta_accuracy_vs_float32_saved_model"] = delta.mean if delta else None
        row["delta_low"], row["delta_high"] = (delta.low, delta.high) if delta else (None, None)
        rows.append(row)
    return sorted(rows, key=lambda row: (row["model"], row["batch_size"], row["learning_rate"], row["policy"],
                                         row["format"] != "saved_model", row["format"]))


def to_markdown(rows: list[dict]) -> str:
    """The report's deployment table."""
    header = ("model", "policy", "batch", "format", "n", "size (bytes)", "accuracy", "Δ vs float32 SavedModel",
              "agreement", "p50 ms (batch 1)", "examples/s")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        delta = _format(row["delta_accuracy_vs_float32_saved_model"], "{:+.4f}")
        if row["delta_low"] is not None:
            delta += f" ({row['delta_low']:+.4f}..{row['delta_high']:+.4f})"
        cells = (row["model"], row["policy"], str(row["batch_size"]), row["format"], str(row["n"]),
                 _format(row["size_bytes"], "{:,.0f}"), _format(row["accuracy"], "{:.4f}"), delta,
                 _format(row["agreement"], "{:.4f}"), _format(row["latency_ms_p50"], "{:.3f}"),
                 _format(row["examples_per_sec"], "{:,.0f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(rows: list[dict], output_dir: pathlib.Path) -> list[pathlib.Path]:
    """deployment.csv and the accuracy-vs-latency plot; returns the files."""
    with open(output_dir / "deployment.csv", "w", newline="") as csv_file:
        writer = csv.DictWriter(csv_file, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return [output_dir / "deployment.csv", plots.plot_accuracy_vs_latency(rows, output_dir)]


def _difference(value, baseline):
    return None if value is None or baseline is None else value - baseline


def _format(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)
