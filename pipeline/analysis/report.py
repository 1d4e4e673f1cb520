"""A sweep's comparison: one row per job, ratios against float32, written as Markdown, CSV and plots.

Works on finished MLflow runs handed to it (pipeline.tracking.sweeps reads them from the store).
"""

import csv
import dataclasses
import pathlib

from pipeline.analysis import plots

COLUMNS = (
    "run", "model", "policy", "batch_size", "learning_rate", "jit_compile", "eval_accuracy",
    "delta_accuracy_vs_float32", "train_examples_per_sec", "speedup_vs_float32", "step_time_ms", "peak_memory_mb",
    "infer_latency_ms_p50", "status",
)
_METRICS = {
    "eval_accuracy": "eval/accuracy",
    "train_examples_per_sec": "train/examples_per_sec",
    "step_time_ms": "train/step_time_ms",
    "peak_memory_mb": "train/peak_memory_mb",
    "infer_latency_ms_p50": "infer/latency_ms_p50",
}
_FORMATS = {
    "eval_accuracy": "{:.4f}", "delta_accuracy_vs_float32": "{:+.4f}", "train_examples_per_sec": "{:,.0f}",
    "speedup_vs_float32": "{:.2f}x", "step_time_ms": "{:.2f}", "peak_memory_mb": "{:,.0f}",
    "infer_latency_ms_p50": "{:.3f}", "learning_rate": "{:.3g}",
}


@dataclasses.dataclass
class Report:
    rows: list[dict]
    markdown: str
    files: list[pathlib.Path]

    @property
    def failed_runs(self) -> list[str]:
        return [row["run"] for row in self.rows if row["status"] != "FINISHED"]


def make_report(jobs: list, loss_histories: dict[str, list[tuple[int, float]]], output_dir) -> Report:
    """Tabulates a sweep's jobs, writes report.csv, report.md and plots into `output_dir`.

    Args:
        jobs: the sweep's child runs (mlflow.entities.Run), oldest first.
        loss_histories: each job's train/loss points, by run id.
        output_dir: a folder for the files; created if missing.
    """
    rows = compare_to_float32([_row(job) for job in jobs])
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(rows)
    (output_dir / "report.md").write_text(markdown + "\n")
    with open(output_dir / "report.csv", "w", newline="") as csv_file:
        writer = csv.DictWriter(csv_file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    names = [job.info.run_name for job in jobs]
    # A search's trials share a name (model-policy-batch); their learning rate tells them apart.
    loss_curves = {
        (job.info.run_name if names.count(job.info.run_name) == 1
         else f"{job.info.run_name} lr={float(job.data.params.get('train.learning_rate', 0)):.3g}"):
        loss_histories.get(job.info.run_id, [])
        for job in jobs
    }
    figures = plots.plot(rows, loss_curves, output_dir)
    return Report(rows=rows, markdown=markdown, files=[output_dir / "report.md", output_dir / "report.csv", *figures])


def compare_to_float32(rows: list[dict]) -> list[dict]:
    """Adds accuracy difference and speedup against the float32 job of the same model, batch size and rate."""
    baselines = {(row["model"], row["batch_size"], row["learning_rate"]): row for row in rows
                 if row["policy"] == "float32" and row["status"] == "FINISHED"}
    for row in rows:
        baseline = baselines.get((row["model"], row["batch_size"], row["learning_rate"]), {})
        row["delta_accuracy_vs_float32"] = _compare_or_none(row, baseline, "eval_accuracy", lambda a, b: a - b)
        row["speedup_vs_float32"] = _compare_or_none(row, baseline, "train_examples_per_sec", lambda a, b: a / b)
    return sorted(rows, key=lambda row: (row["model"], row["batch_size"], row["learning_rate"], row["policy"]))


def to_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_format(column, row[column]) for column in COLUMNS) + " |")
    return "\n".join(lines)


def _compare_or_none(row: dict, baseline: dict, key: str, compare):
    # A job without the figure (failed, or a sweep with stages=[train]) has nothing to compare.
    if row.get(key) is None or baseline.get(key) is None:
        return None
    return compare(row[key], baseline[key])


def _row(job) -> dict:
    params, metrics = job.data.params, job.data.metrics
    row = {
        "run": job.info.run_name,
        "model": params.get("model.name", "?"),
        "policy": params.get("precision.policy", "?"),
        "batch_size": int(params.get("data.batch_size", 0)),
        "learning_rate": float(params.get("train.learning_rate", 0)),
        # The mode the job trained in (auto's choice): speedups compare each policy at its own best.
        "jit_compile": job.data.tags.get("train.jit_compile_chosen", params.get("train.jit_compile")),
        "status": job.info.status,
    }
    row.update({column: metrics.get(name) for column, name in _METRICS.items()})
    if job.info.status != "FINISHED":  # a half-finished job's figures would mislead
        row.update({column: None for column in _METRICS} | {"jit_compile": None})
    return row


def _format(column: str, value) -> str:
    if value is None:
        return "-"
    return _FORMATS.get(column, "{}").format(value)
