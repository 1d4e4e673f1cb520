"""Markdown tables from benchmark.py's JSON: `python benchmarks/printing.py outputs/benchmark.json`."""

import json
import sys


def print_table(title: str, columns: dict[str, str], rows: list[dict]) -> None:
    """One Markdown table: `columns` maps each header to a format string over a row's keys."""
    if not rows:
        return
    print(f"\n{title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(cell.format(**row) for cell in columns.values()) + " |")


def main(path: str) -> None:
    results = json.load(open(path))
    machine = results.get("machine", {})
    print(f"Machine: {machine.get('device', {}).get('device.cpu', '?')}, {machine.get('cpus')} cores, TensorFlow "
          f"{machine.get('tensorflow')}, reduced-precision CPU flags: "
          f"{', '.join(machine.get('reduced_precision_cpu_flags', [])) or 'none'}")
    print_table("Training, examples/s (pipeline vs `model.fit`, XLA held equal: fit's XLA is per step)", {
        "model": "{model}", "batch": "{batch_size}", "policy": "{policy}", "jit_compile": "{jit_compile}",
        "pipeline": "{pipeline_examples_per_sec:,.0f}", "model.fit": "{fit_examples_per_sec:,.0f}",
        "ratio": "{speedup_vs_fit:.2f}x",
    }, results.get("training", []))
    auto = [row | {"fixed": " / ".join(f"{row['fixed_examples_per_sec'].get(mode, 0):,.0f}"
                                       if mode in row["fixed_examples_per_sec"] else "-"
                                       for mode in ("false", "step", "true"))}
            for row in results.get("auto", [])]
    print_table("train.jit_compile=auto against every fixed mode and the best tuned `model.fit`, examples/s", {
        "model": "{model}", "batch": "{batch_size}", "policy": "{policy}",
        "fixed: false / step / true": "{fixed}", "auto's choice": "{chosen}", "auto": "{auto_examples_per_sec:,.0f}",
        "share of best fixed": "{share_of_best_fixed:.0%}", "probe s (first / cached)":
        "{probe_seconds_first:.2f} / {probe_seconds_cached:.3f}", "best tuned fit": "{tuned_fit_examples_per_sec:,.0f}",
        "auto / tuned fit": "{speedup_vs_tuned_fit:.2f}x",
    }, auto)
    roofline = results.get("roofline", {})
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in roofline.get("matmul_gflops_per_sec", {}).items())
    print_table(f"Roofline: 2048x2048 matmul GFLOP/s: {peaks}", {
        "model": "{model}", "batch": "{batch_size}", "policy": "{policy}", "examples/s": "{examples_per_sec:,.0f}",
        "GFLOP/s": "{gflops_per_sec:.1f}", "% of its dtype's matmul roofline": "{percent_of_roofline:.0f}%",
    }, roofline.get("training", []))
    print_table("Inference, the same exported MLP", {
        "how": "{how}", "p50 ms (batch 1)": "{latency_ms_p50:.3f}", "p99 ms (batch 1)": "{latency_ms_p99:.3f}",
        "examples/s (batch 1024)": "{examples_per_sec_batch_1024:,.0f}",
    }, results.get("inference", []))
    print_table("Serving-side XLA: the exported SavedModel's `serve` as exported and under XLA", {
        "model": "{model}", "serving policy": "{policy}", "how": "{how}", "p50 ms (batch 1)": "{latency_ms_p50:.3f}",
        "p99 ms (batch 1)": "{latency_ms_p99:.3f}", "examples/s (batch 1024)": "{examples_per_sec_batch_1024:,.0f}",
        "first call at a new batch size, ms": "{new_batch_size_ms:.1f}",
    }, results.get("serving", []))
    litert = [row | {"size": "-" if row["size_bytes"] is None else f"{row['size_bytes']:,.0f}"}
              for row in results.get("litert", [])]
    print_table("Export formats, float32 models trained one epoch, measured on the 10,000 test images", {
        "model": "{model}", "format": "{format}", "size (bytes)": "{size}", "accuracy": "{accuracy:.4f}",
        "agreement with Keras": "{agreement:.4f}", "p50 ms (batch 1)": "{latency_ms_p50:.4f}",
        "examples/s (batch 1024)": "{examples_per_sec:,.0f}",
    }, litert)
    print_table("Where the CNN's reduced-precision time goes: forward+backward of its own ops, batch 256, ms", {
        "op": "{op}", "float32": "{float32_ms:.2f}", "float16": "{mixed_float16_ms:.2f}",
        "bfloat16": "{mixed_bfloat16_ms:.2f}", "float16/float32": "{float16_vs_float32:.1f}x",
        "bfloat16/float32": "{bfloat16_vs_float32:.1f}x",
    }, results.get("ops", []))
    print_table("TensorFlow's BFC CPU allocator (on in the pipeline) against the default, train examples/s", {
        "model": "{model}", "batch": "{batch}", "BFC": "{bfc_examples_per_sec:,.0f}",
        "default": "{default_examples_per_sec:,.0f}",
        "BFC / default (median, min-max of the paired repeats)": "{ratio:.3f} ({ratio_min:.3f}-{ratio_max:.3f})",
    }, results.get("allocator", []))
    tracking = results.get("tracking")
    if tracking and isinstance(tracking.get("overhead_percent"), dict):
        print(f"\nTracking and progress overhead, {tracking['steps']:,} MLP steps, median wall time against none")
        for label, percent in tracking["overhead_percent"].items():
            print(f"- {label}: {percent:+.1f}%")
    for key in ("startup", "http"):
        if results.get(key):
            print(f"\n{key}: {json.dumps(results[key])}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "outputs/benchmark.json")
