"""Sweep comparison: one row per job, ratios against float32, plots; `python -m pipeline.report`.

Made when a sweep ends (Hydra callback) and on demand for any past sweep:
    python -m pipeline.report                      # the latest sweep
    python -m pipeline.report sweep_id=<sweep.id>  # a given one (the parent run's sweep.id tag)
"""

import csv
import dataclasses
import logging
import pathlib

import hydra
from omegaconf import DictConfig

import pipeline.config  # noqa: F401  registers the schemas conf/ names

logger = logging.getLogger(__name__)

COLUMNS = (
    "run", "model", "policy", "batch_size", "learning_rate", "eval_accuracy", "delta_accuracy_vs_float32",
    "train_examples_per_sec", "speedup_vs_float32", "step_time_ms", "peak_memory_mb",
    "infer_latency_ms_p50", "status",
)
_METRICS = {
    "eval_accuracy": "eval/accuracy",
    "train_examples_per_sec": "train/examples_per_sec",
    "step_time_ms": "train/step_time_ms",
    "peak_memory_mb": "train/peak_memory_mb",
    "infer_latency_ms_p50": "infer/latency_ms_p50",
}


@dataclasses.dataclass
class Report:
    rows: list[dict]
    markdown: str
    files: list[pathlib.Path]

    @property
    def failed_runs(self) -> list[str]:
        return [row["run"] for row in self.rows if row["status"] != "FINISHED"]


def make_report(tracking_config, parent_run, output_dir) -> Report:
    """Tabulates a sweep's jobs, writes report.csv, report.md and plots into `output_dir`."""
    from pipeline import sweeps

    jobs = sweeps.sweep_jobs(tracking_config, parent_run)
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
        sweeps.metric_history(tracking_config, job.info.run_id, "train/loss")
        for job in jobs
    }
    plots = plot(rows, loss_curves, output_dir)
    return Report(rows=rows, markdown=markdown, files=[output_dir / "report.md", output_dir / "report.csv", *plots])


def compare_to_float32(rows: list[dict]) -> list[dict]:
    """Adds accuracy difference and speedup against the float32 job of the same model, batch size and rate."""
    baselines = {(row["model"], row["batch_size"], row["learning_rate"]): row for row in rows
                 if row["policy"] == "float32" and row["status"] == "FINISHED"}
    for row in rows:
        baseline = baselines.get((row["model"], row["batch_size"], row["learning_rate"]), {})
        row["delta_accuracy_vs_float32"] = _ratio_or_none(row, baseline, "eval_accuracy", lambda a, b: a - b)
        row["speedup_vs_float32"] = _ratio_or_none(row, baseline, "train_examples_per_sec", lambda a, b: a / b)
    return sorted(rows, key=lambda row: (row["model"], row["batch_size"], row["learning_rate"], row["policy"]))


def _ratio_or_none(row: dict, baseline: dict, key: str, compare):
    # A job without the figure (failed, or a sweep with stages=[train]) has nothing to compare.
    if row.get(key) is None or baseline.get(key) is None:
        return None
    return compare(row[key], baseline[key])


def to_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_format(column, row[column]) for column in COLUMNS) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], loss_curves: dict[str, list[tuple[int, float]]], output_dir: pathlib.Path):
    """Throughput and memory against batch size per policy, accuracy per policy, loss curves."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    from matplotlib import pyplot

    finished = [row for row in rows if row["status"] == "FINISHED"]
    series = sorted({(row["model"], row["policy"]) for row in finished})
    paths = []
    for metric, label, file_name in (
        ("train_examples_per_sec", "train examples/s", "examples_per_sec_vs_batch_size.png"),
        ("peak_memory_mb", "peak memory (MiB)", "peak_memory_vs_batch_size.png"),
    ):
        figure, axes = pyplot.subplots(figsize=(7, 4.5))
        for model, policy in series:
            points = sorted((row["batch_size"], row[metric]) for row in finished
                            if (row["model"], row["policy"]) == (model, policy) and row[metric] is not None)
            if points:
                axes.plot(*zip(*points), marker="o", label=f"{model} {policy}")
        axes.set(xlabel="batch size", ylabel=label, xscale="log", title=f"{label} vs batch size")
        paths.append(_save(figure, axes, output_dir / file_name))
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    evaluated = [row for row in finished if row["eval_accuracy"] is not None]
    axes.barh([row["run"] for row in evaluated], [row["eval_accuracy"] for row in evaluated])
    axes.set(xlabel="eval accuracy", title="accuracy per job")
    paths.append(_save(figure, None, output_dir / "accuracy_per_policy.png"))
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for run_name, points in sorted(loss_curves.items()):
        if points:
            axes.plot(*zip(*sorted(points)), label=run_name)
    axes.set(xlabel="step", ylabel="train/loss", yscale="log", title="training loss")
    paths.append(_save(figure, axes, output_dir / "loss_curves.png"))
    return paths


def _save(figure, axes, path: pathlib.Path) -> pathlib.Path:
    from matplotlib import pyplot

    if axes is not None and axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def _row(job) -> dict:
    params, metrics = job.data.params, job.data.metrics
    row = {
        "run": job.info.run_name,
        "model": params.get("model.name", "?"),
        "policy": params.get("precision.policy", "?"),
        "batch_size": int(params.get("data.batch_size", 0)),
        "learning_rate": float(params.get("train.learning_rate", 0)),
        "status": job.info.status,
    }
    row.update({column: metrics.get(name) for column, name in _METRICS.items()})
    if job.info.status != "FINISHED":  # a half-finished job's figures would mislead
        row.update({column: None for column in _METRICS})
    return row


_FORMATS = {
    "eval_accuracy": "{:.4f}", "delta_accuracy_vs_float32": "{:+.4f}", "train_examples_per_sec": "{:,.0f}",
    "speedup_vs_float32": "{:.2f}x", "step_time_ms": "{:.2f}", "peak_memory_mb": "{:,.0f}",
    "infer_latency_ms_p50": "{:.3f}", "learning_rate": "{:.3g}",
}


def _format(column: str, value) -> str:
    if value is None:
        return "-"
    return _FORMATS.get(column, "{}").format(value)


@hydra.main(version_base="1.3", config_path="../conf", config_name="report")
def main(config: DictConfig) -> None:
    from pipeline import sweeps

    parent_run = sweeps.find_sweep(config.tracking, config.sweep_id)
    if parent_run is None:
        raise SystemExit(f"no sweep found in {config.tracking.uri} (sweep_id={config.sweep_id}); run one with -m first")
    report = make_report(config.tracking, parent_run, config.output_dir)
    sweeps.log_report(config.tracking, parent_run.info.run_id, config.output_dir)
    print(report.markdown)
    logger.info("report of sweep %s in %s", parent_run.data.tags[sweeps.SWEEP_ID_TAG], config.output_dir)


if __name__ == "__main__":
    main()
