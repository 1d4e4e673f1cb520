"""A sweep's comparison: one row per configuration (its seed repeats grouped), paired comparisons
against float32 with 95 % intervals, verdicts in words; written as Markdown, CSV and plots.

Works on finished MLflow runs handed to it (pipeline/report.py reads them from the store).
Statistics: pipeline/analysis/statistics.py.
"""

import csv
import dataclasses
import pathlib

from pipeline.analysis import deployment, memory, plots, statistics, summary, time_to_target
from pipeline.core import precision

COLUMNS = (
    "run", "model", "parameters", "policy", "batch_size", "learning_rate", "jit_compile", "n", "eval_accuracy",
    "eval_accuracy_std",
    "delta_accuracy_vs_float32", "delta_accuracy_low", "delta_accuracy_high", "accuracy_verdict",
    "train_examples_per_sec", "train_examples_per_sec_std", "speedup_vs_float32", "speedup_low", "speedup_high",
    "step_time_ms", "step_time_ms_std", "peak_tensor_mb", "peak_tensor_mb_std", "step_transient_mb",
    "step_memory_vs_float32", "step_memory_low", "step_memory_high", "max_batch", "max_batch_examples_per_sec",
    "infer_latency_ms_p50",
    "infer_latency_ms_p50_std", "most_changed_class", "most_changed_class_delta", "most_changed_class_low",
    "most_changed_class_high", "target_accuracy", "target_reached_runs", "target_score_s", "target_note",
    "time_to_target_s", "time_to_target_s_std", "time_to_target_without_compile_s", "steps_to_target",
    "time_to_target_vs_float32", "time_to_target_low", "time_to_target_high", "status",
)
_METRICS = {
    "eval_accuracy": "eval/accuracy",
    "train_examples_per_sec": "train/examples_per_sec",
    "step_time_ms": "train/step_time_ms",
    "infer_latency_ms_p50": "infer/latency_ms_p50",
    "parameters": "model/parameters",
} | memory.METRICS | time_to_target.METRICS


@dataclasses.dataclass
class Report:
    jobs: list[dict]  # one per job
    rows: list[dict]  # one per configuration
    markdown: str
    files: list[pathlib.Path]
    warnings: list[str]

    @property
    def failed_runs(self) -> list[str]:
        return [job["run"] for job in self.jobs if job["status"] != "FINISHED"]


def make_report(jobs: list, loss_histories: dict[str, list[tuple[int, float]]], output_dir,
                accuracy_curves: dict[str, list[tuple[float, float]]] | None = None) -> Report:
    """Tabulates a sweep's jobs, writes report.csv, report.md and plots into `output_dir`.

    Args:
        jobs: the sweep's child runs (mlflow.entities.Run), oldest first.
        loss_histories: each job's train/loss points, by run id.
        output_dir: a folder for the files; created if missing.
        accuracy_curves: each job's (seconds on its clock, accuracy) at its evaluations during training, by run id.
    """
    job_rows = [job_row(job) | {"accuracy_curve": (accuracy_curves or {}).get(job.info.run_id)} for job in jobs]
    rows = compare_to_float32(job_rows)
    digests = {job["train_digest"] for job in job_rows if job["train_digest"]}
    warnings = [f"the jobs trained on {len(digests)} different datasets (digests {', '.join(sorted(digests))}): "
                "their figures do not compare"] if len(digests) > 1 else []
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = "\n".join([*(f"**Warning**: {warning}\n" for warning in warnings), summary.to_markdown(rows), "",
                          *(f"- {sentence}" for sentence in [*summary.summary_sentences(rows),
                                                              *memory.sentences(rows)])])
    target_table = time_to_target.to_markdown(rows)
    if target_table:
        markdown += "\n\n## Time to target\n\n" + target_table + "\n\n" + "\n".join(
            f"- {sentence}" for sentence in time_to_target.sentences(rows))
    table = deployment.deployment_rows(job_rows)
    files = []
    if any(row["format"] != "saved_model" for row in table):  # LiteRT formats were exported
        markdown += "\n\n## Deployment\n\n" + deployment.to_markdown(table)
        files = deployment.write(table, output_dir)
    (output_dir / "report.md").write_text(markdown + "\n")
    with open(output_dir / "report.csv", "w", newline="") as csv_file:
        writer = csv.DictWriter(csv_file, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plotted = loss_curve_jobs(jobs)
    names = [job.info.run_name for job in plotted]
    # A search's trials and a configuration's repeats share a name; their rate and seed tell them apart.
    loss_curves = {
        (job.info.run_name if names.count(job.info.run_name) == 1 else
         f"{job.info.run_name} lr={float(job.data.params.get('train.learning_rate', 0)):.3g} "
         f"seed={job.data.params.get('train.seed', '?')}"): loss_histories.get(job.info.run_id, [])
        for job in plotted
    }
    figures = plots.plot(rows, loss_curves, output_dir, job_rows)
    return Report(jobs=job_rows, rows=rows, markdown=markdown, warnings=warnings,
                  files=[output_dir / "report.md", output_dir / "report.csv", *figures, *files])


MAX_LOSS_CURVES = 24  # beyond this a loss plot is unreadable, and each curve costs a request to the store


def loss_curve_jobs(jobs: list) -> list:
    """The jobs whose loss curves the report draws: every job of a small sweep; of a large one, the
    first job of each configuration, up to MAX_LOSS_CURVES."""
    if len(jobs) <= MAX_LOSS_CURVES:
        return jobs
    firsts = {}
    for job in jobs:
        key = tuple(job.data.params.get(name) for name in ("model.name", "precision.policy", "data.batch_size",
                                                            "train.learning_rate"))
        firsts.setdefault(key, job)
    return list(firsts.values())[:MAX_LOSS_CURVES]


def job_row(job) -> dict:
    """One job's settings and figures (None where it has none: failed, or a stage it did not run)."""
    params, metrics, tags = job.data.params, job.data.metrics, job.data.tags
    row = {
        "run": job.info.run_name,
        "model": params.get("model.name", "?"),
        "policy": params.get("precision.policy", "?"),
        "batch_size": int(params.get("data.batch_size", 0)),
        "learning_rate": float(params.get("train.learning_rate", 0)),
        "seed": params.get("train.seed"),
        # The mode the job trained in (auto's choice): speedups compare each policy at its own best.
        "jit_compile": tags.get("train.jit_compile_chosen", params.get("train.jit_compile")),
        "status": job.info.status,
        "class_accuracy": [metrics.get(f"eval/accuracy_class_{label}") for label in range(_class_count(metrics))],
        "train_digest": next((entry.dataset.digest for entry in getattr(job.inputs, "dataset_inputs", None) or []
                              if any(tag.value == "training" for tag in entry.tags)), None),
    }
    row.update({column: metrics.get(name) for column, name in _METRICS.items()})
    row.update(time_to_target.job_fields(params, tags))
    row["memory_estimate"] = memory.estimate_of(metrics)
    formats = sorted({name.split("/")[1] for name in metrics if name.startswith("infer/litert_")})
    row["deployment"] = {export_format: {figure: metrics.get(f"{prefix}/{figure}") for figure in deployment.FIGURES}
                         for export_format, prefix in [("saved_model", "infer")] + [(name, f"infer/{name}")
                                                                                    for name in formats]}
    if job.info.status != "FINISHED":  # a half-finished job's figures would mislead
        row.update({column: None for column in _METRICS} | {"class_accuracy": [None] * len(row["class_accuracy"]),
                                                             "deployment": {}, "memory_estimate": None})
    return row


def compare_to_float32(job_rows: list[dict]) -> list[dict]:
    """Groups jobs that differ only in the seed into one row per configuration, and compares each with
    float32 at the same model, batch size and rate, pairing its jobs with float32's by seed."""
    groups: dict[tuple, list[dict]] = {}
    for job in job_rows:
        groups.setdefault((*(job[key] for key in summary.CONFIGURATION), job["status"]), []).append(job)
    baselines = {_reference_partner(key): jobs for key, jobs in groups.items()
                 if precision.is_reference(key[1]) and key[-1] == "FINISHED"}
    rows = []
    for key, jobs in groups.items():
        baseline = {job.get("seed"): job for job in baselines.get(_reference_partner(key), [])}
        pairs = [(job, baseline[job.get("seed")]) for job in jobs if job.get("seed") in baseline]
        rows.append(_configuration_row(jobs, pairs))
    return sorted(rows, key=lambda row: (row["model"], row["batch_size"], row["learning_rate"], row["policy"]))


def _reference_partner(key: tuple) -> tuple:
    """The reference configuration (float32's, precision.REFERENCE) a (model, policy, batch size, rate, status)
    group compares with."""
    model, policy, batch_size, learning_rate, _ = key
    return model, precision.reference_of(policy), batch_size, learning_rate


def _configuration_row(jobs: list[dict], pairs: list[tuple[dict, dict]]) -> dict:
    first = jobs[0]
    row = {key: first[key] for key in (*summary.CONFIGURATION, "status")}
    row["run"] = first["run"] if len(jobs) == 1 else f"{first['run']} x{len(jobs)}"
    row["n"] = len(jobs)
    row["jit_compile"] = "/".join(sorted({str(job["jit_compile"]) for job in jobs if job.get("jit_compile")})) or None
    for column in _METRICS:
        _put(row, column, column, statistics.mean_interval(job.get(column) for job in jobs))  # low/high: plots
        row[f"{column}_std"] = statistics.standard_deviation(job.get(column) for job in jobs)
    delta = statistics.mean_interval(_difference(job.get("eval_accuracy"), partner.get("eval_accuracy"))
                                     for job, partner in pairs)
    speedup = statistics.ratio_interval(statistics.ratio(job.get("train_examples_per_sec"),
                                               partner.get("train_examples_per_sec")) for job, partner in pairs)
    _put(row, "delta_accuracy_vs_float32", "delta_accuracy", delta)
    _put(row, "speedup_vs_float32", "speedup", speedup)
    _put(row, "step_memory_vs_float32", "step_memory", statistics.ratio_interval(
        statistics.ratio(job.get("step_transient_mb"), partner.get("step_transient_mb")) for job, partner in pairs))
    row["memory_estimate"] = first.get("memory_estimate")
    compared = not precision.is_reference(first["policy"])
    row["accuracy_verdict"] = statistics.accuracy_verdict(delta) if compared else None
    time_to_target.add_to_row(row, jobs, pairs)
    class_count = max((len(job.get("class_accuracy") or []) for job in jobs), default=0)
    row["class_deltas"] = [statistics.mean_interval(_difference(_class_accuracy(job, label),
                                                                _class_accuracy(partner, label))
                                                    for job, partner in pairs) for label in range(class_count)]
    changed = [(label, estimate) for label, estimate in enumerate(row["class_deltas"]) if estimate is not None]
    if changed and compared:
        label, estimate = max(changed, key=lambda item: abs(item[1].mean))
        row["most_changed_class"] = label
        _put(row, "most_changed_class_delta", "most_changed_class", estimate)
    return row


def _class_accuracy(job: dict, label: int) -> float | None:
    accuracies = job.get("class_accuracy") or []
    return accuracies[label] if label < len(accuracies) else None


def _class_count(metrics: dict) -> int:
    """The classes a job evaluated: its eval/accuracy_class_<k> metrics (as many as its dataset has)."""
    return sum(1 for name in metrics if name.startswith("eval/accuracy_class_"))


def _put(row: dict, column: str, prefix: str, estimate) -> None:
    row[column] = estimate.mean if estimate else None
    row[f"{prefix}_low"] = estimate.low if estimate else None
    row[f"{prefix}_high"] = estimate.high if estimate else None


def _difference(value, baseline):
    return None if value is None or baseline is None else value - baseline

