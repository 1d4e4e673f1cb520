"""Time to a target test accuracy per policy: the pipeline against a tuned `model.fit`, seed by seed, in one run.

    python benchmarks/time_to_target.py                                  # CNN to 0.90, 3 seeds: about 20 minutes
    python benchmarks/time_to_target.py --model vit --target 0.85 --seeds 1

Both sides build the same model (pipeline.core.model.build_model under the policy, the same seed), train
with Adam at the same rate and batch on real Fashion-MNIST in the same example order (the pipeline's
seeded order per epoch, pipeline/training/batch_order.py), evaluate on the 10,000 test images once an
epoch, and stop at the first evaluation that reaches the target: a seed's pair takes the same path to it,
Each run is a fresh process; the clock includes compilation and evaluations on both sides.

Near a plateau the two may still cross the target an epoch apart: their kernels round differently, and
0.8992 against 0.9003 decides it. So beside each side's own time to target, the table pairs them at the
same point: the first epoch at which either reached the target, each side's seconds to that epoch's
evaluation (both ran it: one stopped there, the other went on).

- The pipeline: `python -m pipeline` with train.target_accuracy (train.jit_compile=auto; auto's probe runs
  before the clock, its decision cached for the later seeds), 52 steps a call (468 steps an epoch: its
  evaluations then fall at the epoch's end, as fit's do); its train/time_to_target_s.
- The peer: Keras's own loop, tuned: the fastest of jit_compile (XLA per step, or not) and
  steps_per_execution in TUNING, measured here first per policy; a tf.data pipeline of that order,
  gathered, normalized and prefetched in parallel; fit's validation_data evaluating once an epoch, and a
  callback that stops at the target. Its time: from the fit call to the end of the epoch that reached it.

Not a test: it asserts nothing, it reports. The tables in docs/benchmarks.md come from it.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
IDX_DIR = "/usr/share/datasets/fashion-mnist"
TUNING = [(jit_compile, steps) for jit_compile in (True, False) for steps in (1, 16, 64)]
SCRATCH = pathlib.Path(tempfile.gettempdir()) / "time-to-target"  # stores of the pipeline's jobs, made anew a run


def model_and_data(model_name: str, policy: str, seed: int):
    """The model as the pipeline builds it, and the real splits, from conf/."""
    from pipeline.core import config, data, model

    composed = config.compose([f"model={model_name}", "data=fashion_mnist", "data.source=idx",
                               f"data.idx_dir={IDX_DIR}", "export.dir=unused", "train.checkpoint_dir=unused"])
    return model.build_model(composed.model, policy, seed=seed), data.load_datasets(composed.data)


def fit(model_name: str, policy: str, seed: int, jit_compile: bool, steps_per_execution: int, target: float | None,
        epochs: int, steps: int | None = None) -> dict:
    """Keras's fit on the pipeline's model; with a target, the seconds to it, else examples/s over `steps`."""
    import keras
    import tensorflow as tf

    from pipeline.core import data

    built, datasets = model_and_data(model_name, policy, seed)
    # Under mixed_float16 Keras's compile wraps the optimizer in a LossScaleOptimizer itself.
    built.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit_compile, metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=steps_per_execution)

    from pipeline.training import batch_order

    steps_per_epoch = len(datasets.train.labels) // datasets.batch_size
    order = tf.concat([batch_order.epoch_order(len(datasets.train.labels), seed, epoch)[
        : steps_per_epoch * datasets.batch_size] for epoch in range(epochs)], axis=0)  # the pipeline's order
    images, labels = tf.constant(datasets.train.images), tf.constant(datasets.train.labels)
    train_data = tf.data.Dataset.from_tensor_slices(order).batch(datasets.batch_size).map(
        lambda batch: (data.normalize(tf.gather(images, batch)), tf.gather(labels, batch)),
        num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    test_data = tf.data.Dataset.from_tensor_slices((datasets.test.images, datasets.test.labels)).batch(
        datasets.batch_size).map(lambda images, labels: (data.normalize(images), labels),
                                 num_parallel_calls=tf.data.AUTOTUNE).cache().prefetch(tf.data.AUTOTUNE)
    marks, reached, epoch_seconds = [], {}, []

    class StopAtTarget(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            marks.append(time.perf_counter())

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - started)
            if target is not None and logs.get("val_accuracy", 0.0) >= target and not reached:
                reached.update(seconds=time.perf_counter() - started, epoch=epoch + 1,
                               accuracy=float(logs["val_accuracy"]))
                self.model.stop_training = True

    started = time.perf_counter()
    if target is None:  # tuning: examples/s, the first execution (it compiles) left out
        built.fit(train_data, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[StopAtTarget()])
        return {"examples_per_sec": (len(marks) - 1) * steps_per_execution * datasets.batch_size
                / (marks[-1] - marks[0])}
    built.fit(train_data, epochs=epochs, steps_per_epoch=steps_per_epoch, validation_data=test_data, verbose=0,
              callbacks=[StopAtTarget()])
    return reached | {"reached": bool(reached), "epoch_seconds": epoch_seconds}


def pipeline_job(model_name: str, policy: str, seed: int, target: float, epochs: int) -> dict:
    """One `python -m pipeline` job to the target; its logged time to target."""
    import mlflow

    store = SCRATCH / f"pipeline-{model_name}-{policy}-{seed}"
    subprocess.run([sys.executable, "-m", "pipeline", f"model={model_name}", f"precision={policy}",
                    f"train.seed={seed}", "data=fashion_mnist", "data.source=idx", f"data.idx_dir={IDX_DIR}",
                    f"train.target_accuracy={target}", f"train.epochs={epochs}", "train.steps_per_call=52",
                    "stages=[train]",
                    f"train.jit_cache_file={SCRATCH}/jit_compile.json", f"tracking.uri=sqlite:///{store}/mlflow.db",
                    f"tracking.artifact_root={store}/artifacts", f"hydra.run.dir={store}/run"],
                   cwd=REPO_ROOT, capture_output=True, check=True)
    client = mlflow.MlflowClient(f"sqlite:///{store}/mlflow.db")
    (run,) = client.search_runs(["1"])
    metrics = run.data.metrics
    elapsed = client.get_metric_history(run.info.run_id, "train/elapsed_s")
    return {"reached": run.data.tags.get("train.target_reached") == "true",
            "seconds": metrics.get("train/time_to_target_s"),
            "without_compile_seconds": metrics.get("train/time_to_target_without_compile_s"),
            "steps": metrics.get("train/steps_to_target"), "evaluation_share": metrics.get("train/evaluation_share"),
            "jit_compile": run.data.tags.get("train.jit_compile_chosen"),
            "epoch_seconds": [point.value for point in sorted(elapsed, key=lambda point: point.step)]}


def in_fresh_process(function: str, *arguments) -> dict:
    """One call of this script's `function` in a new Python process (nothing compiled or cached carries over)."""
    finished = subprocess.run([sys.executable, __file__, "--call", json.dumps([function, list(arguments)])],
                              cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cnn", help="a conf/model file: cnn, vit, mlp")
    parser.add_argument("--target", type=float, default=0.90, help="test accuracy to reach")
    parser.add_argument("--policies", default="float32,mixed_bfloat16",
                        help="comma-separated (mixed_float16 is emulated on CPUs without AVX-512 FP16: slow)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20, help="the budget")
    parser.add_argument("--json", default="outputs/time_to_target.json")
    parser.add_argument("--call", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.call:
        function, call_arguments = json.loads(arguments.call)
        print(json.dumps(globals()[function](*call_arguments)))
        return
    import shutil

    from pipeline.core import device

    shutil.rmtree(SCRATCH, ignore_errors=True)

    flags = sorted(device.read_cpu_flags() & {"avx512_bf16", "amx_bf16", "avx512_fp16"})
    print(f"machine: {device.describe_device().get('device.cpu')}, {os.cpu_count()} cores, CPU flags: "
          f"{', '.join(flags) or 'none'}; {arguments.model} to {arguments.target} test accuracy", flush=True)
    policies, rows = arguments.policies.split(","), []
    tuned = {}
    for policy in policies:
        speeds = {(jit, steps): in_fresh_process("fit", arguments.model, policy, 0, jit, steps, None, 1, 320)
                  ["examples_per_sec"] for jit, steps in TUNING}
        tuned[policy] = max(speeds, key=speeds.get)
        print(f"{policy}: fit examples/s by (jit_compile, steps_per_execution): "
              + ", ".join(f"{key}: {value:,.0f}" for key, value in speeds.items()) + f"; tuned: {tuned[policy]}",
              flush=True)
    for seed in range(arguments.seeds):
        for policy in policies:
            ours = pipeline_job(arguments.model, policy, seed, arguments.target, arguments.epochs)
            theirs = in_fresh_process("fit", arguments.model, policy, seed, *tuned[policy], arguments.target,
                                      arguments.epochs)
            row = {"policy": policy, "seed": seed, "pipeline_s": ours["seconds"], "pipeline_steps": ours["steps"],
                   "pipeline_without_compile_s": ours["without_compile_seconds"], "pipeline_jit": ours["jit_compile"],
                   "evaluation_share": ours["evaluation_share"], "fit_s": theirs.get("seconds"),
                   "fit_epochs": theirs.get("epoch"), "fit_tuning": list(tuned[policy])}
            both = row["pipeline_s"] and row["fit_s"]
            row["pipeline_over_fit"] = row["pipeline_s"] / row["fit_s"] if both else None
            row["pipeline_epochs"] = len(ours["epoch_seconds"])
            # The first epoch where either reached it: each side's seconds to that evaluation.
            same = min(row["pipeline_epochs"] if ours["reached"] else 10**9, row["fit_epochs"] or 10**9)
            if same <= min(len(ours["epoch_seconds"]), len(theirs["epoch_seconds"])):
                row["same_epoch"] = same
                ours_s, theirs_s = ours["epoch_seconds"][same - 1], theirs["epoch_seconds"][same - 1]
                row["pipeline_over_fit_same_epoch"] = ours_s / theirs_s
            rows.append(row)
            print("  ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                            for key, value in row.items()), flush=True)
    print("\n| policy | seeds reached (pipeline / fit) | epochs to target (pipeline / fit) | pipeline s | fit s | "
          "pipeline / fit | pipeline / fit, same epoch | pipeline mode | fit (jit_compile, steps_per_execution) |")
    print("|---|---|---|---|---|---|---|---|---|")

    def spread(values, text="{:.2f}"):  # the median over seeds, with the min-max
        return (f"{text.format(statistics.median(values))} ({text.format(min(values))}-{text.format(max(values))})"
                if values else "-")

    for policy in policies:
        mine = [row for row in rows if row["policy"] == policy]
        reached = [row for row in mine if row["pipeline_s"] and row["fit_s"]]
        epochs = ", ".join(f"{row['pipeline_epochs']}/{row['fit_epochs']}" for row in mine)
        print(f"| {policy} | {sum(bool(row['pipeline_s']) for row in mine)}/{len(mine)} / "
              f"{sum(bool(row['fit_s']) for row in mine)}/{len(mine)} | "
              f"{epochs} | "
              f"{spread([row['pipeline_s'] for row in reached], '{:.1f}')} | "
              f"{spread([row['fit_s'] for row in reached], '{:.1f}')} | "
              f"{spread([row['pipeline_over_fit'] for row in reached])}x | "
              f"{spread([row['pipeline_over_fit_same_epoch'] for row in mine if 'same_epoch' in row])}x | "
              f"{'/'.join(sorted({str(row['pipeline_jit']) for row in mine}))} | {tuned[policy]} |")
    path = pathlib.Path(arguments.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": arguments.model, "target": arguments.target, "cpu_flags": flags,
                                "tuned": {policy: list(value) for policy, value in tuned.items()}, "rows": rows},
                               indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
