"""The report's rows in words and tables: Markdown for report.md, a compact table for the terminal,
one sentence per reduced-precision configuration."""

from pipeline.core import precision

CONFIGURATION = ("model", "policy", "batch_size", "learning_rate")  # what a row is; seeds are its repeats

_FORMATS = {
    "eval_accuracy": "{:.4f}", "delta_accuracy_vs_float32": "{:+.4f}", "train_examples_per_sec": "{:,.0f}",
    "speedup_vs_float32": "{:.2f}x", "step_time_ms": "{:.2f}", "peak_tensor_mb": "{:,.1f}",
    "step_transient_mb": "{:,.1f}", "step_memory_vs_float32": "{:.2f}x", "max_batch": "{:,.0f}",
    "max_batch_examples_per_sec": "{:,.0f}", "parameters": "{:,.0f}",
    "infer_latency_ms_p50": "{:.3f}", "learning_rate": "{:.3g}", "most_changed_class_delta": "{:+.4f}",
    "time_to_target_s": "{:.1f}", "target_score_s": "{:.1f}", "time_to_target_vs_float32": "{:.2f}x",
    "time_to_target_without_compile_s": "{:.1f}", "steps_to_target": "{:,.0f}",
}


def summary_sentences(rows: list[dict]) -> list[str]:
    """One sentence per reduced-precision configuration with a float32 partner: accuracy and speed."""
    sentences = []
    for row in rows:
        if precision.is_reference(row["policy"]) or row["delta_accuracy_vs_float32"] is None:
            continue
        seeds = f"{row['n']} seed{'s' if row['n'] > 1 else ''}"
        accuracy = f"accuracy {row['delta_accuracy_vs_float32']:+.4f}"
        if row["delta_accuracy_low"] is not None:
            accuracy += f" (95% CI {row['delta_accuracy_low']:+.4f}..{row['delta_accuracy_high']:+.4f})"
        verdict = row["accuracy_verdict"].replace("no accuracy cost detected", "no cost detected")
        speed = ""
        if row["speedup_vs_float32"] is not None:
            speed = "; " + _speed_in_words(row["speedup_vs_float32"], row["speedup_low"], row["speedup_high"])
        reference = precision.reference_of(row["policy"])
        sentences.append(f"{row['policy']} vs {reference}, {row['model']}, batch {row['batch_size']}, {seeds}: "
                         f"{accuracy}: {verdict}{speed}")
    return sentences


def _speed_in_words(speedup: float, low: float | None, high: float | None) -> str:
    """Faster or slower, with the interval in the same direction; an interval across 1 is no verdict."""
    if low is None:
        return f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"
    if low <= 1 <= high:
        return f"{speedup:.2f}x float32's speed (95% CI {low:.2f}..{high:.2f}x): no speed difference detected"
    if low > 1:
        return f"{speedup:.2f}x faster (95% CI {low:.2f}..{high:.2f}x)"
    return f"{1 / speedup:.2f}x slower (95% CI {1 / high:.2f}..{1 / low:.2f}x slower)"


_MARKDOWN = ("run", "model", "parameters", "policy", "batch_size", "learning_rate", "jit_compile", "n", "eval_accuracy",
             "delta_accuracy_vs_float32", "accuracy_verdict", "train_examples_per_sec", "speedup_vs_float32",
             "step_time_ms", "peak_tensor_mb", "step_memory_vs_float32", "max_batch", "infer_latency_ms_p50",
             "most_changed_class", "status")


def to_markdown(rows: list[dict]) -> str:
    """The report's table: means ± standard deviations, and 95 % intervals in brackets, where seeds repeat."""
    lines = ["| " + " | ".join(_MARKDOWN) + " |", "|" + "---|" * len(_MARKDOWN)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row, column) for column in _MARKDOWN) + " |")
    return "\n".join(lines)


def cell(row: dict, column: str) -> str:
    """A column of a row as the tables show it."""
    text = _format(column, row.get(column))
    if row.get(f"{column}_std") is not None:
        text += f" ± {_format(column, row[f'{column}_std']).lstrip('+')}"
    interval = {"delta_accuracy_vs_float32": "delta_accuracy", "speedup_vs_float32": "speedup",
                "step_memory_vs_float32": "step_memory", "time_to_target_vs_float32": "time_to_target"}.get(column)
    if interval and row.get(f"{interval}_low") is not None:
        text += f" ({_format(column, row[f'{interval}_low'])}..{_format(column, row[f'{interval}_high'])})"
    if column == "most_changed_class" and row.get(column) is not None:
        text = f"{row[column]}: {cell(row, 'most_changed_class_delta')}"
        if row.get("most_changed_class_low") is not None:
            text += (f" ({_format('most_changed_class_delta', row['most_changed_class_low'])}.."
                     f"{_format('most_changed_class_delta', row['most_changed_class_high'])})")
    return text


def compact_table(rows: list[dict]) -> str:
    """The terminal's table: the settings that differ between rows first, then the headline figures."""
    settings = [column for column in CONFIGURATION if len({row[column] for row in rows}) > 1] or ["policy"]
    if "model" in settings and any(row.get("parameters") for row in rows):  # a model-size sweep: say the sizes
        settings.insert(settings.index("model") + 1, "parameters")
    columns = [*settings, "jit_compile"]
    if any(row["n"] > 1 for row in rows):
        columns.append("n")
    measured = [column for column in ("eval_accuracy", "delta_accuracy_vs_float32", "train_examples_per_sec",
                                      "speedup_vs_float32", "peak_tensor_mb", "step_memory_vs_float32", "max_batch",
                                      "max_batch_examples_per_sec", "target_reached_runs", "time_to_target_s",
                                      "target_score_s", "time_to_target_vs_float32")
                if any(row.get(column) is not None for row in rows)]
    columns += measured or ["eval_accuracy"]
    if any(row["status"] != "FINISHED" for row in rows):
        columns.append("status")
    headers = {"batch_size": "batch", "learning_rate": "lr", "eval_accuracy": "accuracy",
               "delta_accuracy_vs_float32": "Δacc vs float32", "train_examples_per_sec": "examples/s",
               "speedup_vs_float32": "speedup", "jit_compile": "jit", "peak_tensor_mb": "tensor MiB",
               "parameters": "params",
               "step_memory_vs_float32": "step memory", "max_batch": "fits batch",
               "max_batch_examples_per_sec": "examples/s there", "target_reached_runs": "reached",
               "time_to_target_s": "to target s", "target_score_s": "MLPerf score s",
               "time_to_target_vs_float32": "time vs float32"}
    cells = [[headers.get(column, column) for column in columns]]
    cells += [[cell(row, column) for column in columns] for row in rows]
    widths = [max(len(line[index]) for line in cells) for index in range(len(columns))]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in cells)


def _format(column: str, value) -> str:
    if value is None:
        return "-"
    return _FORMATS.get(column, "{}").format(value)
