"""Side-by-side speed figures for the pipeline, printed as tables and written as JSON.

    python benchmarks/benchmark.py                     # every section: over an hour on 2 cores
    python benchmarks/benchmark.py --sections auto     # one section (auto alone: about 20 minutes)
    python benchmarks/benchmark.py --sections training --quick
    python benchmarks/printing.py outputs/benchmark.json   # the tables again, from the JSON

The tables and the hardware they were measured on are in docs/benchmarks.md.

Every ratio compares two measurements taken in this one run, on the same model, data, policy and
batch size: the machine is shared and noisy, so absolute figures from different runs do not
compare. Not a test: it asserts nothing, it reports.
"""

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline.core import config, data, device, model, precision  # noqa: E402
from pipeline.stages import export, infer, train  # noqa: E402
from pipeline.training import compile_mode  # noqa: E402

POLICIES = tuple(precision.POLICIES)
DTYPES = {name: tf.dtypes.as_dtype(spec.compute_dtype) for name, spec in precision.POLICIES.items()}
# The benchmark's models, as overrides of conf/ (the wide MLP is matmul-bound: the roofline check).
MODELS = {"mlp": ["model=mlp"], "cnn": ["model=cnn"], "mlp_wide": ["model=mlp", "model.hidden_units=4096"]}
SCRATCH = pathlib.Path(tempfile.mkdtemp(prefix="benchmark-"))
IDX_DIR = "/usr/share/datasets/fashion-mnist"  # --idx-dir


def compose(overrides: list[str]):
    """conf/ as `python -m pipeline <overrides>` composes it, its output folders in a scratch folder."""
    return config.compose([*overrides, f"export.dir={SCRATCH}/export", f"train.checkpoint_dir={SCRATCH}/checkpoints",
                           f"tracking.uri=sqlite:///{SCRATCH}/mlflow.db", f"tracking.artifact_root={SCRATCH}/artifacts",
                           "tracking.experiment=benchmark"])


def train_pipeline(split, model_name, policy, batch_size, steps, jit_compile, log_metric=None,
                   cache_file=None, progress=None) -> train.TrainResult:
    """The pipeline's loop; at least 8 calls, so the compiling calls are a small part left out."""
    composed = compose([*MODELS[model_name], f"train.max_steps={steps}", "train.epochs=1000",
                        f"train.jit_compile={jit_compile}", f"train.steps_per_call={max(1, min(50, steps // 8))}",
                        f"train.jit_cache_file={cache_file or 'null'}"])
    built = model.build_model(composed.model, policy, seed=0)
    datasets = data.Datasets(split, split, batch_size, num_classes=10)
    return train.train(built, datasets, composed.train, policy, log_metric=log_metric, progress=progress)


def fit_examples_per_sec(split, model_name, policy, batch_size, steps, jit_compile, steps_per_execution=1):
    """Plain Keras: compile + fit on a tf.data pipeline, timed between batch callbacks after warm-up."""
    built = model.build_model(compose(MODELS[model_name]).model, policy, seed=0)
    # Under mixed_float16 Keras's compile wraps the optimizer in a LossScaleOptimizer itself.
    built.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit_compile,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=steps_per_execution)
    dataset = (tf.data.Dataset.from_tensor_slices((split.images, split.labels)).shuffle(60000, seed=0).repeat()
               .batch(batch_size, drop_remainder=True).map(lambda x, y: (data.normalize(x), y)).prefetch(2))
    marks = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            marks.append((batch, time.perf_counter()))

    total = max(steps, 3 * steps_per_execution)
    built.fit(dataset, epochs=1, steps_per_epoch=total, verbose=0, callbacks=[Timer()])
    (first_batch, first_time), (last_batch, last_time) = marks[1], marks[-1]  # marks[0] includes compiling
    return (last_batch - first_batch) * batch_size / (last_time - first_time)


def training_flops_per_example(built) -> float:
    """Forward multiply-adds of Dense and Conv2D layers, x2 for FLOPs, x3 for forward plus backward."""
    flops = 0
    for layer in built.layers:
        if isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
        elif isinstance(layer, keras.layers.Conv2D):
            height, width, channels_out = layer.output.shape[1:]
            kernel_height, kernel_width, channels_in, _ = layer.kernel.shape
            flops += 2 * height * width * channels_out * kernel_height * kernel_width * channels_in
    return 3.0 * flops


def matmul_roofline(size=2048, repeats=20) -> dict[str, float]:
    """GFLOP/s of a square matmul per compute dtype: the most this machine's TensorFlow does."""
    peaks = {}
    for policy, dtype in DTYPES.items():
        left = tf.random.normal((size, size), dtype=tf.float32)
        left = tf.cast(left, dtype)
        multiply = tf.function(lambda a: tf.matmul(a, a))
        multiply(left).numpy()
        started = time.perf_counter()
        for _ in range(repeats):
            result = multiply(left)
        result.numpy()
        peaks[policy] = 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9
    return peaks


VIT_WIDTHS = (32, 64, 128)  # token widths of the size table
VIT_EPOCHS = 5


def section_training(split, quick) -> list[dict]:
    """The pipeline's loop against plain model.fit, XLA held equal on both sides, on and off.

    fit's jit_compile=True compiles each step, so it faces both the pipeline's "step" and "true".
    """
    rows = []
    steps = {("mlp", 32): 400, ("mlp", 256): 400, ("cnn", 32): 64, ("cnn", 256): 16}
    for (model_name, batch_size), count in steps.items():
        count = count // 2 if quick else count
        for policy in POLICIES:
            # Whole-call XLA ("true") only for the MLP: with convolutions it is several times slower.
            for jit_compile in ("false", "step", "true") if model_name == "mlp" else ("false", "step"):
                ours = train_pipeline(split, model_name, policy, batch_size, count, jit_compile)
                peer = fit_examples_per_sec(split, model_name, policy, batch_size, count, jit_compile != "false")
                rows.append({"model": model_name, "batch_size": batch_size, "policy": policy,
                             "jit_compile": jit_compile, "pipeline_examples_per_sec": ours.examples_per_sec,
                             "fit_examples_per_sec": peer, "speedup_vs_fit": ours.examples_per_sec / peer,
                             "pipeline_warmup_seconds": ours.warmup_seconds})
                print(_line(rows[-1]), flush=True)
    return rows


def section_auto(split, quick) -> list[dict]:
    """train.jit_compile=auto against every fixed mode, and against the best tuned model.fit, per cell.

    Per model x policy x batch: each fixed mode and auto, run three times in turn (twice with --quick)
    and the fastest run kept (the machine is shared); auto's first run probes on a fresh decision cache
    (a first job), its later runs read that cache (later jobs); the order of the variants rotates from
    one repeat to the next. model.fit is tuned over XLA off/on and steps_per_execution.
    """
    rows = []
    # At least 1.5 s of timed training per run in the fastest mode: shorter runs drown in the machine's noise.
    steps = {("mlp", 32): 12000, ("mlp", 256): 3200, ("cnn", 32): 1440, ("cnn", 256): 144}
    for (model_name, batch_size), count in steps.items():
        count = count // 2 if quick else count
        for policy in POLICIES:
            built = model.build_model(compose(MODELS[model_name]).model, policy, seed=0)
            modes = [str(mode) for mode in compile_mode.candidate_modes(built, strategy=None)]
            cache_file = SCRATCH / f"jit-{model_name}-{policy}-{batch_size}.json"
            fixed, auto = {mode: [] for mode in modes}, []
            variants = [*modes, "auto"]
            for repeat in range(2 if quick else 3):
                # Rotated each repeat, so no variant always runs right after an XLA one: on 2 cores the run
                # after one is measurably slower (XLA's own threads are still about).
                for variant in variants[repeat % len(variants):] + variants[: repeat % len(variants)]:
                    if variant == "auto":
                        auto.append(train_pipeline(split, model_name, policy, batch_size, count, "auto",
                                                   cache_file=cache_file))
                    else:
                        fixed[variant].append(train_pipeline(split, model_name, policy, batch_size, count,
                                                             variant).examples_per_sec)
            best_fixed = {mode: max(figures) for mode, figures in fixed.items()}
            best_mode = max(best_fixed, key=best_fixed.get)
            fits = {(jit, spe): fit_examples_per_sec(split, model_name, policy, batch_size, count, jit, spe)
                    for jit in (False, True) for spe in (1, 10, 50, 200) if 3 * spe <= count}
            best_fit = max(fits, key=fits.get)
            auto_examples_per_sec = max(result.examples_per_sec for result in auto)
            rows.append({
                "model": model_name, "batch_size": batch_size, "policy": policy,
                "chosen": str(auto[0].jit.mode), "fixed_examples_per_sec": best_fixed, "best_fixed": best_mode,
                "auto_examples_per_sec": auto_examples_per_sec,
                "share_of_best_fixed": auto_examples_per_sec / best_fixed[best_mode],
                "probe_seconds_first": auto[0].jit.probe_seconds, "probe_seconds_cached": auto[1].jit.probe_seconds,
                "cached_source": auto[1].jit.source,
                "tuned_fit_examples_per_sec": fits[best_fit],
                "tuned_fit": f"jit_compile={best_fit[0]}, steps_per_execution={best_fit[1]}",
                "speedup_vs_tuned_fit": auto_examples_per_sec / fits[best_fit],
            })
            print(_line(rows[-1]), flush=True)
    return rows


def section_roofline(split, quick) -> dict:
    peaks = matmul_roofline()
    print("matmul roofline GFLOP/s:", {policy: round(value, 1) for policy, value in peaks.items()}, flush=True)
    rows = []
    for model_name, batch_size, steps in (("mlp", 256, 300), ("cnn", 256, 10 if quick else 20),
                                          ("mlp_wide", 1024, 10 if quick else 30)):
        for policy in POLICIES:
            result = train_pipeline(split, model_name, policy, batch_size, steps, jit_compile="auto",
                                    cache_file=SCRATCH / "jit-roofline.json")
            flops = training_flops_per_example(result.model)
            achieved = result.examples_per_sec * flops / 1e9
            rows.append({"model": model_name, "batch_size": batch_size, "policy": policy,
                         "examples_per_sec": result.examples_per_sec, "gflops_per_sec": achieved,
                         "percent_of_roofline": 100 * achieved / peaks[policy],
                         "peak_memory_mb": result.peak_memory_mb})
            print(_line(rows[-1]), flush=True)
    return {"matmul_gflops_per_sec": peaks, "training": rows}


def section_inference(split, quick) -> list[dict]:
    runs = 100 if quick else 300
    composed = compose([*MODELS["mlp"], f"infer.latency_runs={runs}", "infer.throughput_batch_size=1024",
                        "infer.throughput_runs=20"])
    built = model.build_model(composed.model, precision.REFERENCE, seed=0)
    exported = export.export(built, composed.export, composed.model, precision.REFERENCE, 0)
    infer_config = composed.infer
    reference = built.predict(data.normalize(split.images[:10000]), verbose=0, batch_size=1024)
    stage = infer.infer(exported.saved_model_dir, data.Split(split.images[:10000], split.labels[:10000]),
                        reference, infer_config)
    loaded = tf.saved_model.load(str(exported.saved_model_dir))
    single = [data.normalize(split.images[index : index + 1]) for index in range(runs)]
    large = data.normalize(split.images[:1024])
    callers = {
        "SavedModel serve (bare)": lambda batch: loaded.serve(batch),
        "model(x)": lambda batch: built(batch, training=False),
        "model.predict": lambda batch: built.predict(batch, verbose=0),
    }
    rows = [{"how": "infer stage", "latency_ms_p50": stage.latency_ms_p50, "latency_ms_p99": stage.latency_ms_p99,
             "examples_per_sec_batch_1024": stage.examples_per_sec}]
    for how, call in callers.items():
        latencies = infer.time_calls(call, single)
        large_seconds = infer.time_calls(call, [large] * 20)
        rows.append({"how": how, "latency_ms_p50": float(np.percentile(latencies, 50) * 1000),
                     "latency_ms_p99": float(np.percentile(latencies, 99) * 1000),
                     "examples_per_sec_batch_1024": 1024 * 20 / large_seconds.sum()})
    for row in rows:
        print(_line(row), flush=True)
    return rows


def section_serving(split, quick) -> list[dict]:
    """Would a serving-side choice pay? The exported SavedModel's `serve` as exported and wrapped in
    XLA (tf.function(jit_compile=True)), per model and serving policy: batch-1 latency, batch-1024 throughput."""
    rows = []
    runs = 100 if quick else 300
    single = [data.normalize(split.images[index : index + 1]) for index in range(runs)]
    large = data.normalize(split.images[:1024])
    for model_name in ("mlp", "cnn"):
        for policy in (precision.REFERENCE, "mixed_bfloat16"):
            composed = compose([*MODELS[model_name], f"export.dir={SCRATCH}/serving-{model_name}-{policy}"])
            built = model.build_model(composed.model, policy, seed=0)
            loaded = tf.saved_model.load(str(export.export(built, composed.export, composed.model, policy, 0)
                                             .saved_model_dir))
            callers = {"serve": loaded.serve, "serve under XLA": tf.function(loaded.serve, jit_compile=True)}
            for how, call in callers.items():
                latencies = infer.time_calls(call, single)
                large_seconds = infer.time_calls(call, [large] * 20)
                started = time.perf_counter()  # a batch size not seen before: XLA compiles again
                np.asarray(call(large[:7]))
                new_batch_size_ms = (time.perf_counter() - started) * 1000
                rows.append({"model": model_name, "policy": policy, "how": how, "new_batch_size_ms": new_batch_size_ms,
                             "latency_ms_p50": float(np.percentile(latencies, 50) * 1000),
                             "latency_ms_p99": float(np.percentile(latencies, 99) * 1000),
                             "examples_per_sec_batch_1024": 1024 * 20 / large_seconds.sum()})
                print(_line(rows[-1]), flush=True)
    return rows


def section_litert(split, quick) -> list[dict]:
    """Each export format of the MLP and the CNN (float32, one epoch), measured as the infer stage measures
    it on the test split: size, accuracy, agreement with Keras, batch-1 latency, batch-1024 throughput."""
    from pipeline.stages import evaluate

    test_split = data.read_idx_split(IDX_DIR, "test")
    datasets = data.Datasets(split, test_split, 1024, num_classes=10)
    formats = "[" + ",".join(config.ExportFormat) + "]"
    rows = []
    for model_name in ("mlp", "cnn"):
        composed = compose([*MODELS[model_name], f"export.dir={SCRATCH}/litert-{model_name}",
                            f"export.formats={formats}", f"infer.latency_runs={300 if quick else 1000}",
                            "infer.throughput_runs=20"])
        trained = train_pipeline(split, model_name, precision.REFERENCE, 128, 100 if quick else 468, "auto",
                                 cache_file=SCRATCH / "jit-litert.json").model
        reference = evaluate.evaluate(trained, datasets)
        exported = export.export(trained, composed.export, composed.model, precision.REFERENCE, 0,
                                 calibration_split=split)
        measured = {"saved_model": infer.infer(exported.saved_model_dir, test_split, reference.logits, composed.infer)}
        measured |= {name: infer.infer_litert(path, test_split, reference.logits, composed.infer)
                     for name, path in exported.litert_files.items()}
        for name, figures in measured.items():
            rows.append({"model": model_name, "format": name, "size_bytes": figures.size_bytes,
                         "accuracy": figures.accuracy, "agreement": figures.agreement,
                         "latency_ms_p50": figures.latency_ms_p50, "latency_ms_p99": figures.latency_ms_p99,
                         "examples_per_sec": figures.examples_per_sec})
            print(_line(rows[-1]), flush=True)
    return rows


def section_tracking_overhead(split, quick) -> dict:
    """The same training steps without and with train/loss going to a real SQLite store, and with live
    progress on top (plain log lines, as off a terminal, and a tqdm bar, as on one).

    The store and the run exist before the clock starts; each figure is the whole train() call's wall
    time (logging and progress happen between the timed calls, so per-call timings would miss them).
    The variants alternate, five of each, and the medians are compared.
    """
    import contextlib

    import mlflow

    from pipeline import console
    from pipeline.tracking import runs

    steps = 4000 if quick else 20000
    variants = {"without": (None, None), "logging": (runs.log_metric_history, None),
                "logging + progress lines": (runs.log_metric_history, False),
                "logging + progress bar": (runs.log_metric_history, True)}
    seconds = {label: [] for label in variants}
    with runs.start_run(compose([]).tracking, "bench-tracking", {}), open(os.devnull, "w") as devnull:
        for _ in range(3 if quick else 5):
            for label, (sink, interactive) in variants.items():
                progress = None if interactive is None else console.Progress("bench", interactive=interactive)
                with contextlib.redirect_stderr(devnull):  # the bar's drawing costs the same on a terminal
                    started = time.perf_counter()
                    train_pipeline(split, "mlp", precision.REFERENCE, 32, steps, "true", log_metric=sink,
                                   progress=progress)
                    seconds[label].append(time.perf_counter() - started)
                    if progress:
                        progress.close()
    mlflow.set_tracking_uri(None)
    medians = {label: float(np.median(values)) for label, values in seconds.items()}
    row = {"seconds": seconds, "steps": steps,
           "overhead_percent": {label: 100 * (median - medians["without"]) / medians["without"]
                                for label, median in medians.items() if label != "without"},
           "progress_overhead_percent": 100 * (medians["logging + progress lines"] - medians["logging"])
           / medians["logging"]}
    print(_line(row), flush=True)
    return row


def section_startup(split, quick) -> dict:
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline", "--help"], cwd=REPO_ROOT, capture_output=True, check=True)
        timings.append(time.perf_counter() - started)
    row = {"help_seconds": min(timings)}
    print(_line(row), flush=True)
    return row


def section_allocator(split, quick) -> list[dict]:
    """Training speed with TensorFlow's BFC CPU allocator (which the pipeline turns on, for tensor memory
    figures) against the default allocator: real jobs alternated in fresh processes, paired per repeat."""
    import mlflow

    rows = []
    for model_name, batch_size in (("mlp", 128), ("cnn", 256)):
        ratios, speeds = [], {"true": [], "false": []}
        for repeat in range(2 if quick else 3):
            for allocator in ("true", "false"):
                store = SCRATCH / f"allocator-{model_name}-{repeat}-{allocator}"
                subprocess.run([sys.executable, "-m", "pipeline", f"model={model_name}", "data=fashion_mnist",
                                "data.source=idx", f"data.idx_dir={IDX_DIR}", f"data.batch_size={batch_size}",
                                f"train.max_steps={300 if quick else 1000}", "train.jit_compile=false",
                                "stages=[train]", f"tracking.uri=sqlite:///{store}/mlflow.db",
                                f"tracking.artifact_root={store}/artifacts", f"hydra.run.dir={store}/run"],
                               cwd=REPO_ROOT, capture_output=True, check=True,
                               env=os.environ | {"TF_CPU_ALLOCATOR_USE_BFC": allocator})
                (run,) = mlflow.MlflowClient(f"sqlite:///{store}/mlflow.db").search_runs(["1"])
                speeds[allocator].append(run.data.metrics["train/examples_per_sec"])
            ratios.append(speeds["true"][-1] / speeds["false"][-1])
        row = {"model": model_name, "batch": batch_size, "bfc_examples_per_sec": float(np.median(speeds["true"])),
               "default_examples_per_sec": float(np.median(speeds["false"])), "ratio": float(np.median(ratios)),
               "ratio_min": min(ratios), "ratio_max": max(ratios)}
        rows.append(row)
        print(_line(row), flush=True)
    return rows


def section_memory(split, quick) -> dict:
    """Tensor memory per policy from the jobs' own metrics (one fresh process per job, batch 256, graph mode and
    XLA per step), the estimate beside it, and pipeline.max_batch's largest CNN batch within 512 MiB."""
    import mlflow

    jobs = []
    for model_name in ("mlp", "cnn"):
        for mode in ("false", "step"):
            for policy in POLICIES:
                store = SCRATCH / f"memory-{model_name}-{mode}-{policy}"
                subprocess.run([sys.executable, "-m", "pipeline", f"model={model_name}", f"precision={policy}",
                                "data=fashion_mnist", "data.source=idx", f"data.idx_dir={IDX_DIR}",
                                "data.batch_size=256", f"train.max_steps={31 if quick else 101}",
                                "train.steps_per_call=1", f"train.jit_compile={mode}", "stages=[train]",
                                f"tracking.uri=sqlite:///{store}/mlflow.db",
                                f"tracking.artifact_root={store}/artifacts", f"hydra.run.dir={store}/run"],
                               cwd=REPO_ROOT, capture_output=True, check=True)
                (run,) = mlflow.MlflowClient(f"sqlite:///{store}/mlflow.db").search_runs(["1"])
                metrics = run.data.metrics
                row = {"model": model_name, "mode": mode, "policy": policy,
                       "peak_tensor_mb": metrics["train/peak_tensor_mb"],
                       "step_transient_mb": metrics["train/step_transient_mb"],
                       "estimate_mb": metrics["memory/estimate/transient_mb"],
                       "measured_over_estimate": metrics["memory/measured_over_estimate"],
                       "examples_per_sec": metrics["train/examples_per_sec"]}
                jobs.append(row)
                print(_line(row), flush=True)
    store = SCRATCH / "memory-max-batch"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.max_batch", "-m", f"precision={','.join(POLICIES)}", "model=cnn",
                    "data=fashion_mnist", "data.source=idx", f"data.idx_dir={IDX_DIR}", "train.jit_compile=false",
                    "train.memory_budget_mb=512", f"tracking.uri=sqlite:///{store}/mlflow.db",
                    f"tracking.artifact_root={store}/artifacts", f"hydra.sweep.dir={store}/multirun"],
                   cwd=REPO_ROOT, capture_output=True, check=True)
    wall_seconds = time.perf_counter() - started
    max_batch = []
    for run in mlflow.MlflowClient(f"sqlite:///{store}/mlflow.db").search_runs(["1"]):
        if "memory/max_batch" in run.data.metrics:
            metrics = run.data.metrics
            row = {"policy": run.data.params["precision.policy"], "max_batch": metrics["memory/max_batch"],
                   "peak_mb": metrics["memory/max_batch_peak_mb"],
                   "examples_per_sec": metrics["memory/max_batch_examples_per_sec"],
                   "search_seconds": metrics["memory/search_seconds"]}
            max_batch.append(row)
            print(_line(row), flush=True)
    print(f"max_batch sweep of {len(max_batch)} policies: {wall_seconds:.0f} s wall", flush=True)
    return {"jobs": jobs, "max_batch": max_batch, "max_batch_wall_seconds": wall_seconds}


def section_vit(split, quick) -> dict:
    """The ViT at three widths under float32 and mixed_bfloat16, as one `-m` sweep of the pipeline (auto mode):
    parameters, examples/s, step memory and test accuracy after VIT_EPOCHS epochs; and the smallest width at
    which bfloat16 trains faster than float32 here."""
    import mlflow

    store = SCRATCH / "vit-sizes"
    epochs = 1 if quick else VIT_EPOCHS
    started = time.perf_counter()
    widths = ",".join(map(str, VIT_WIDTHS))
    subprocess.run([sys.executable, "-m", "pipeline", "-m", "model=vit", f"model.width={widths}",
                    f"precision={precision.REFERENCE},mixed_bfloat16", "data=fashion_mnist", "data.source=idx",
                    f"data.idx_dir={IDX_DIR}", f"train.epochs={epochs}", "stages=[train,evaluate]",
                    f"train.jit_cache_file={SCRATCH}/jit-vit.json", f"tracking.uri=sqlite:///{store}/mlflow.db",
                    f"tracking.artifact_root={store}/artifacts", f"hydra.sweep.dir={store}/multirun"],
                   cwd=REPO_ROOT, capture_output=True, check=True)
    rows = []
    for run in mlflow.MlflowClient(f"sqlite:///{store}/mlflow.db").search_runs(["1"], order_by=["start_time ASC"]):
        metrics = run.data.metrics
        if "model/parameters" not in metrics:
            continue  # the sweep's parent run
        rows.append({"width": int(run.data.params["model.width"]), "policy": run.data.params["precision.policy"],
                     "parameters": metrics["model/parameters"], "jit": run.data.tags["train.jit_compile_chosen"],
                     "examples_per_sec": metrics["train/examples_per_sec"],
                     "step_transient_mb": metrics["train/step_transient_mb"],
                     "peak_tensor_mb": metrics["train/peak_tensor_mb"], "accuracy": metrics["eval/accuracy"]})
        print(_line(rows[-1]), flush=True)
    speed = {(row["width"], row["policy"]): row["examples_per_sec"] for row in rows}
    faster = [width for width in VIT_WIDTHS if speed[(width, "mixed_bfloat16")] > speed[(width, precision.REFERENCE)]]
    print(f"smallest width where mixed_bfloat16 trains faster than float32: {min(faster) if faster else 'none'} "
          f"(CPU flags: {', '.join(sorted(device.read_cpu_flags() & {'avx512_bf16', 'amx_bf16'})) or 'none'}); "
          f"sweep {time.perf_counter() - started:.0f} s", flush=True)
    return {"epochs": epochs, "rows": rows, "smallest_faster_width": min(faster) if faster else None}


def section_http(split, quick) -> dict:
    """p50 of `mlflow models serve` answering one image, on a freshly logged model."""
    import urllib.request

    import mlflow

    from pipeline.tracking import models, runs

    composed = compose(MODELS["mlp"])
    uri = composed.tracking.uri
    built = model.build_model(composed.model, precision.REFERENCE, seed=0)
    exported = export.export(built, composed.export, composed.model, precision.REFERENCE, 0)
    with runs.start_run(composed.tracking, "bench-http", {}):
        model_uri = models.log_model(built, exported.saved_model_dir, data.normalize(split.images[:2]).numpy())
    mlflow.set_tracking_uri(None)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                               "local", "-h", "127.0.0.1", "-p", str(port)],
                              env=os.environ | {"MLFLOW_TRACKING_URI": uri},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                break
            except OSError:
                time.sleep(1)
        body = json.dumps({"inputs": data.normalize(split.images[:1]).numpy().tolist()}).encode()

        def post(_):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=30).read()

        latencies = infer.time_calls(post, list(range(50 if quick else 200)))
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    row = {"http_latency_ms_p50": float(np.percentile(latencies, 50) * 1000),
           "http_latency_ms_p99": float(np.percentile(latencies, 99) * 1000)}
    print(_line(row), flush=True)
    return row


def section_ops(split, quick) -> list[dict]:
    """Where reduced-precision CNN time goes: the CNN's own conv and dense ops, per dtype."""
    rows = []
    shapes = {"conv 3x3 1->32 on 28x28": ((256, 28, 28, 1), (3, 3, 1, 32)),
              "conv 3x3 32->64 on 13x13": ((256, 13, 13, 32), (3, 3, 32, 64)),
              "dense 1600->128": ((256, 1600), (1600, 128))}
    for name, (input_shape, kernel_shape) in shapes.items():
        row, rank = {"op": name}, len(input_shape)
        for policy, dtype in DTYPES.items():
            inputs = tf.cast(tf.random.normal(input_shape), dtype)
            kernel = tf.Variable(tf.cast(tf.random.normal(kernel_shape), dtype))

            @tf.function
            def forward_backward(inputs=inputs, kernel=kernel, rank=rank):
                with tf.GradientTape() as tape:
                    if rank == 4:
                        output = tf.nn.conv2d(inputs, kernel, 1, "VALID")
                    else:
                        output = tf.matmul(inputs, kernel)
                    total = tf.reduce_sum(tf.cast(output, tf.float32))
                return tape.gradient(total, kernel)

            forward_backward().numpy()
            seconds = infer.time_calls(lambda _: forward_backward().numpy(), list(range(5 if quick else 20)))
            row[f"{policy}_ms"] = float(np.median(seconds) * 1000)
        row["bfloat16_vs_float32"] = row["mixed_bfloat16_ms"] / row["float32_ms"]
        row["float16_vs_float32"] = row["mixed_float16_ms"] / row["float32_ms"]
        rows.append(row)
        print(_line(row), flush=True)
    return rows


SECTIONS = {"training": section_training, "auto": section_auto, "roofline": section_roofline,
            "inference": section_inference, "tracking": section_tracking_overhead, "startup": section_startup,
            "http": section_http, "ops": section_ops, "serving": section_serving, "litert": section_litert,
            "allocator": section_allocator, "memory": section_memory, "vit": section_vit}


def _line(row: dict) -> str:
    return "  ".join(f"{key}={value:,.4g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in row.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="fewer steps: a smoke run, noisier figures")
    parser.add_argument("--idx-dir", default="/usr/share/datasets/fashion-mnist", help="real images, IDX format")
    parser.add_argument("--json", default="outputs/benchmark.json", help="where to write the figures")
    arguments = parser.parse_args()
    keras.config.disable_interactive_logging()
    global IDX_DIR
    IDX_DIR = arguments.idx_dir
    split = data.read_idx_split(arguments.idx_dir, "train")
    cpu_flags = device.read_cpu_flags()
    hardware = {policy: precision.hardware_support(policy, device.gpu_compute_capability(), cpu_flags)[1]
                for policy in POLICIES}
    policy_flags = {flag for spec in precision.POLICIES.values() for flag in spec.cpu_flags}
    reduced_precision_flags = sorted(cpu_flags & policy_flags)
    results = {"machine": {"cpus": os.cpu_count(), "tensorflow": tf.__version__, "hardware": hardware,
                           "device": device.describe_device(), "reduced_precision_cpu_flags": reduced_precision_flags}}
    print(f"machine: {results['machine']['device'].get('device.cpu')}, {os.cpu_count()} cores, "
          f"reduced-precision CPU flags: {', '.join(reduced_precision_flags) or 'none'}", flush=True)
    for name in arguments.sections.split(","):
        print(f"\n== {name}", flush=True)
        results[name] = SECTIONS[name](split, arguments.quick)
    path = pathlib.Path(arguments.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=float))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
