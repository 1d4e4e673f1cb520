"""The sweep report's plots, as PNG files: means with 95 % error bars where seeds repeat."""

import pathlib

from pipeline.analysis import memory, time_to_target
from pipeline.core import precision


def plot(rows: list[dict], loss_curves: dict[str, list[tuple[int, float]]], output_dir: pathlib.Path,
         job_rows: list[dict] | None = None):
    """Throughput and tensor memory against batch size per policy, accuracy per configuration, per-class
    accuracy change against float32, loss curves, accuracy against time (jobs that evaluated during
    training, from `job_rows`); returns the files."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    from matplotlib import pyplot

    finished = [row for row in rows if row["status"] == "FINISHED"]
    series = sorted({(row["model"], row["policy"]) for row in finished})
    paths = []
    for metric, label, file_name in (
        ("train_examples_per_sec", "train examples/s", "examples_per_sec_vs_batch_size.png"),
    ):
        figure, axes = pyplot.subplots(figsize=(7, 4.5))
        for model, policy in series:
            points = sorted((row["batch_size"], row[metric], *_error(row, metric)) for row in finished
                            if (row["model"], row["policy"]) == (model, policy) and row[metric] is not None)
            if points:
                batch_sizes, means, below, above = zip(*points)
                axes.errorbar(batch_sizes, means, yerr=[below, above], marker="o", capsize=3, label=f"{model} {policy}")
        axes.set(xlabel="batch size", ylabel=label, xscale="log", title=f"{label} vs batch size (mean, 95% CI)")
        paths.append(_save(figure, axes, output_dir / file_name))
    figure, axes = pyplot.subplots(figsize=(7, max(3.0, 0.35 * len(finished) + 1.5)))
    evaluated = [row for row in finished if row["eval_accuracy"] is not None]
    errors = list(zip(*(_error(row, "eval_accuracy") for row in evaluated))) or None
    axes.barh([row["run"] for row in evaluated], [row["eval_accuracy"] for row in evaluated], xerr=errors, capsize=3)
    axes.set(xlabel="eval accuracy (mean, 95% CI)", title="accuracy per configuration")
    paths.append(_save(figure, None, output_dir / "accuracy_per_policy.png"))
    paths.append(_plot_class_deltas(pyplot, finished, output_dir / "per_class_delta.png"))
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for run_name, points in sorted(loss_curves.items()):
        if points:
            axes.plot(*zip(*sorted(points)), label=run_name)
    axes.set(xlabel="step", ylabel="train/loss", yscale="log", title="training loss")
    paths.append(_save(figure, axes, output_dir / "loss_curves.png"))
    return (paths + memory.plot(pyplot, rows, output_dir, _save)
            + time_to_target.plot(pyplot, job_rows or [], output_dir, _save))


def _plot_class_deltas(pyplot, rows: list[dict], path: pathlib.Path) -> pathlib.Path:
    """Per class, each reduced-precision configuration's accuracy change against float32 (paired by seed)."""
    compared = [row for row in rows if not precision.is_reference(row["policy"]) and any(row.get("class_deltas") or [])]
    figure, axes = pyplot.subplots(figsize=(8, 4.5))
    width = 0.8 / max(len(compared), 1)
    for index, row in enumerate(compared):
        estimates = [(label, estimate) for label, estimate in enumerate(row["class_deltas"]) if estimate is not None]
        labels = [label + (index - (len(compared) - 1) / 2) * width for label, _ in estimates]
        errors = [[estimate.mean - estimate.low if estimate.has_interval else 0 for _, estimate in estimates],
                  [estimate.high - estimate.mean if estimate.has_interval else 0 for _, estimate in estimates]]
        axes.bar(labels, [estimate.mean for _, estimate in estimates], width, yerr=errors, capsize=2,
                 label=f"{row['model']} {row['policy']} bs{row['batch_size']} (n={row['n']})")
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set(xlabel="class", ylabel="Δ accuracy vs float32", xticks=range(max((len(row["class_deltas"])
                                                                             for row in compared), default=0)),
             title="per-class accuracy change against float32 (mean, 95% CI)")
    return _save(figure, axes, path)


def _error(row: dict, metric: str) -> tuple[float, float]:
    """Distances from the mean to its interval's ends (0 without repeats)."""
    if row.get(f"{metric}_low") is None:
        return 0.0, 0.0
    return row[metric] - row[f"{metric}_low"], row[f"{metric}_high"] - row[metric]


def _save(figure, axes, path: pathlib.Path) -> pathlib.Path:
    from matplotlib import pyplot

    if axes is not None and axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def write_confusion_matrix(confusion, folder: pathlib.Path) -> list[pathlib.Path]:
    """The confusion matrix as confusion_matrix.json (the counts) and confusion_matrix.png in `folder`."""
    import json

    counts = folder / "confusion_matrix.json"
    counts.write_text(json.dumps({"rows": "true class", "columns": "predicted class", "counts": confusion.tolist()}))
    return [counts, plot_confusion_matrix(confusion, folder / "confusion_matrix.png")]


def plot_confusion_matrix(confusion, path: pathlib.Path) -> pathlib.Path:
    """Counts of (true class, predicted class), shaded, with the counts written in."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 5.5))
    image = axes.imshow(confusion, cmap="Blues")
    for (true_class, predicted_class), count in zip(((t, p) for t in range(len(confusion))
                                                     for p in range(len(confusion))), confusion.flatten()):
        axes.text(predicted_class, true_class, str(count), ha="center", va="center", fontsize=7,
                  color="white" if count > confusion.max() / 2 else "black")
    axes.set(xlabel="predicted class", ylabel="true class", xticks=range(len(confusion)),
             yticks=range(len(confusion)), title="confusion matrix (test split)")
    figure.colorbar(image, ax=axes)
    return _save(figure, None, path)


def plot_accuracy_vs_latency(rows: list[dict], output_dir: pathlib.Path) -> pathlib.Path:
    """One point per training policy and exported format: accuracy against batch-1 latency."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    markers = dict(zip(precision.POLICIES, "os^Dvp*"))  # one shape per policy, in the table's order
    for export_format in sorted({row["format"] for row in rows}):
        points = [row for row in rows if row["format"] == export_format and row["latency_ms_p50"] is not None]
        for index, row in enumerate(points):
            axes.scatter(row["latency_ms_p50"], row["accuracy"], marker=markers.get(row["policy"], "x"),
                         color=f"C{sorted({row['format'] for row in rows}).index(export_format)}",
                         label=export_format if index == 0 else None)
    axes.set(xlabel="batch-1 latency p50 (ms)", ylabel="test accuracy", xscale="log",
             title="accuracy vs latency per exported format (marker: training policy)")
    return _save(figure, axes, output_dir / "accuracy_vs_latency.png")
