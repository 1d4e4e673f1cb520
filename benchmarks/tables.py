"""Markdown tables from benchmark.py's JSON: `python benchmarks/tables.py outputs/benchmark.json`."""

import json
import sys


def main(path: str) -> None:
    results = json.load(open(path))
    print("Training, examples/s (pipeline vs `model.fit`, XLA held equal: fit's XLA is per step)\n")
    print("| model | batch | policy | jit_compile | pipeline | model.fit | ratio |")
    print("|---|---|---|---|---|---|---|")
    for row in results.get("training", []):
        print(f"| {row['model']} | {row['batch_size']} | {row['policy']} | {row['jit_compile']} | "
              f"{row['pipeline_examples_per_sec']:,.0f} | {row['fit_examples_per_sec']:,.0f} | "
              f"{row['speedup_vs_fit']:.2f}x |")
    print("\nBest tuned `model.fit` (XLA on, steps_per_execution swept) vs the pipeline's best mode, MLP float32\n")
    print("| batch | fit by steps_per_execution (1 / 10 / 50 / 200) "
          "| pipeline by jit_compile (false / step / true) | ratio |")
    print("|---|---|---|---|")
    for row in results.get("tuned_fit", []):
        fits = " / ".join(f"{value:,.0f}" for value in row["fit_by_steps_per_execution"].values())
        ours = " / ".join(f"{value:,.0f}" for value in row["pipeline_by_jit_compile"].values())
        print(f"| {row['batch_size']} | {fits} | {ours} | {row['speedup_vs_tuned_fit']:.2f}x |")
    roofline = results.get("roofline")
    if roofline:
        peaks = roofline["matmul_gflops_per_sec"]
        print("\nRoofline: 2048x2048 matmul GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()) + "\n")
        print("| model | batch | policy | examples/s | GFLOP/s | % of its dtype's matmul roofline |")
        print("|---|---|---|---|---|---|")
        for row in roofline["training"]:
            print(f"| {row['model']} | {row['batch_size']} | {row['policy']} | {row['examples_per_sec']:,.0f} | "
                  f"{row['gflops_per_sec']:.1f} | {row['percent_of_roofline']:.0f}% |")
    if results.get("inference"):
        print("\nInference, the same exported MLP\n")
        print("| how | p50 ms (batch 1) | p99 ms (batch 1) | examples/s (batch 1024) |")
        print("|---|---|---|---|")
        for row in results["inference"]:
            print(f"| {row['how']} | {row['latency_ms_p50']:.3f} | {row['latency_ms_p99']:.3f} | "
                  f"{row['examples_per_sec_batch_1024']:,.0f} |")
    if results.get("ops"):
        print("\nWhere the CNN's reduced-precision time goes: forward+backward of its own ops, batch 256, ms\n")
        print("| op | float32 | float16 | bfloat16 | float16/float32 | bfloat16/float32 |")
        print("|---|---|---|---|---|---|")
        for row in results["ops"]:
            print(f"| {row['op']} | {row['float32_ms']:.2f} | {row['mixed_float16_ms']:.2f} | "
                  f"{row['mixed_bfloat16_ms']:.2f} | {row['float16_vs_float32']:.1f}x | "
                  f"{row['bfloat16_vs_float32']:.1f}x |")
    for key in ("tracking", "startup", "http"):
        if results.get(key):
            print(f"\n{key}: {json.dumps(results[key])}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "outputs/benchmark.json")
