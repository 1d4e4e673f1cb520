"""The report's time to a target accuracy: scored over seeds as MLPerf Training scores it, compared with
float32 seed by seed, in words, in a table and in a plot of accuracy against wall-clock time.

MLPerf's scoring (mlcommons/training_policies, training_rules.adoc): of a configuration's N runs, drop
the fastest and the slowest and average the rest; a run that never reaches the target counts as the
slowest, and more than one such run makes the result invalid.
"""

import dataclasses
import math
import pathlib
import statistics

from pipeline.analysis import statistics as statistics_lib
from pipeline.analysis import summary
from pipeline.core import precision

METRICS = {  # report column -> MLflow metric
    "time_to_target_s": "train/time_to_target_s",
    "time_to_target_without_compile_s": "train/time_to_target_without_compile_s",
    "steps_to_target": "train/steps_to_target",
}


@dataclasses.dataclass
class Score:
    """A configuration's MLPerf-style score: None with the reason where the rules give none."""

    seconds: float | None
    runs: int
    reached: int
    note: str | None = None


def mlperf_score(times: list[float | None]) -> Score:
    """Drops the fastest and the slowest of the runs' times to target and means the rest.

    Args:
        times: one per run, None for a run that never reached the target.
    """
    runs, missed = len(times), sum(time is None for time in times)
    if missed > 1:
        return Score(None, runs, runs - missed,
                     f"invalid: {missed} of {runs} runs missed the target (MLPerf allows one)")
    if runs < 3:
        return Score(None, runs, runs - missed,
                     f"needs 3 runs or more to drop the fastest and the slowest ({runs} ran)")
    ordered = sorted(time for time in times if time is not None) + [math.inf] * missed
    note = "the run that missed counts as the slowest" if missed else None
    return Score(statistics.mean(ordered[1:-1]), runs, runs - missed, note)


def job_fields(params: dict, tags: dict) -> dict:
    """What a job's row needs of its target: the target and whether the job reached it."""
    target = params.get("train.target_accuracy")
    return {"target_accuracy": float(target) if target not in (None, "None") else None,
            "target_reached": {"true": True, "false": False}.get(tags.get("train.target_reached"))}


def add_to_row(row: dict, jobs: list[dict], pairs: list[tuple[dict, dict]]) -> None:
    """A configuration's target figures: its score, how many seeds reached, and the paired ratio of each
    seed's time against its float32 partner's (seeds where both reached), with its 95 % interval."""
    targets = {job.get("target_accuracy") for job in jobs}
    row["target_accuracy"] = targets.pop() if len(targets) == 1 else None
    if row["target_accuracy"] is None or any(job.get("target_reached") is None for job in jobs):
        return
    score = mlperf_score([job["time_to_target_s"] for job in jobs])
    row["target_score_s"], row["target_note"] = score.seconds, score.note
    row["target_reached_runs"] = f"{score.reached}/{score.runs}"
    if precision.is_reference(row["policy"]):
        return
    ratio = statistics_lib.ratio_interval(
        statistics_lib.ratio(job.get("time_to_target_s"), partner.get("time_to_target_s"))
        for job, partner in pairs if partner.get("target_accuracy") == row["target_accuracy"])
    row["time_to_target_vs_float32"] = ratio.mean if ratio else None
    row["time_to_target_low"], row["time_to_target_high"] = (ratio.low, ratio.high) if ratio else (None, None)
    row["time_to_target_pairs"] = ratio.n if ratio else 0


def sentences(rows: list[dict]) -> list[str]:
    """Per reduced-precision configuration with a target: its time against float32's, in words."""
    said = []
    references = {(row["model"], row["batch_size"], row["learning_rate"]): row for row in rows
                  if precision.is_reference(row["policy"]) and row.get("target_reached_runs")}
    for row in rows:
        reference = references.get((row["model"], row["batch_size"], row["learning_rate"]))
        if precision.is_reference(row["policy"]) or reference is None or not row.get("target_reached_runs"):
            continue
        where = (f"{row['target_reached_runs']} seeds reached ({reference['policy']} "
                 f"{reference['target_reached_runs']}), {row['model']}, batch {row['batch_size']}")
        if row.get("time_to_target_vs_float32") is None:
            said.append(f"{row['policy']}: no seed where both it and {reference['policy']} reached "
                        f"{row['target_accuracy']:g}; {where}")
            continue
        text = (f"{row['policy']} reaches {row['target_accuracy']:g} in {row['time_to_target_vs_float32']:.2f}x "
                f"{reference['policy']}'s time")
        low, high = row["time_to_target_low"], row["time_to_target_high"]
        if low is not None:
            verdict = "sooner" if high < 1 else "later" if low > 1 else "no difference detected"
            text += f" (95% CI {low:.2f}..{high:.2f}x): {verdict}"
        said.append(f"{text}; {where}")
    return said


_COLUMNS = {"model": "model", "policy": "policy", "batch_size": "batch", "target_accuracy": "target",
            "target_reached_runs": "reached", "target_score_s": "score s (MLPerf)", "time_to_target_s": "mean s",
            "time_to_target_without_compile_s": "without compile s", "steps_to_target": "steps",
            "time_to_target_vs_float32": "vs float32 (95% CI)", "target_note": "note"}


def to_markdown(rows: list[dict]) -> str:
    """The time-to-target table, or "" when no configuration had a target."""
    timed = [row for row in rows if row.get("target_reached_runs")]
    if not timed:
        return ""
    lines = ["| " + " | ".join(_COLUMNS.values()) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(summary.cell(row, column) for column in _COLUMNS) + " |" for row in timed]
    return "\n".join(lines)


def plot(pyplot, job_rows: list[dict], output_dir: pathlib.Path, save) -> list[pathlib.Path]:
    """Accuracy against the clock's seconds per configuration: the median seed (by time to target) drawn
    solid, the other seeds faint, and the target as a dashed line."""
    curves = [job for job in job_rows if len(job.get("accuracy_curve") or []) > 1]
    if not curves:
        return []
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    groups: dict[tuple, list[dict]] = {}
    for job in curves:
        groups.setdefault((job["model"], job["policy"], job["batch_size"], job["learning_rate"]), []).append(job)
    for index, (key, jobs) in enumerate(sorted(groups.items())):
        color = f"C{index % 10}"
        ordered = sorted(jobs, key=lambda job: job["time_to_target_s"] or math.inf)
        median = ordered[(len(ordered) - 1) // 2]
        for job in ordered:
            elapsed, accuracy = zip(*job["accuracy_curve"])
            solid = job is median
            axes.plot(elapsed, accuracy, color=color, alpha=1.0 if solid else 0.25, linewidth=2 if solid else 1,
                      marker="o" if solid else None, markersize=3,
                      label=f"{key[0]} {key[1]} bs{key[2]} (median of {len(jobs)} seeds)" if solid else None)
    for target in sorted({job["target_accuracy"] for job in curves if job.get("target_accuracy")}):
        axes.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:g}")
    axes.set(xlabel="seconds since the first training step", ylabel="accuracy during training",
             title="accuracy against wall-clock time")
    return [save(figure, axes, output_dir / "accuracy_vs_time.png")]
