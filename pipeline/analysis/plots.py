"""The sweep report's plots, as PNG files."""

import pathlib


def plot(rows: list[dict], loss_curves: dict[str, list[tuple[int, float]]], output_dir: pathlib.Path):
    """Throughput and memory against batch size per policy, accuracy per job, loss curves; returns the files."""
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
