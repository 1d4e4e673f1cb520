"""Scaling figures, side by side in one run: launchers, 1 vs 2 workers, memory and overhead per job
across a long sweep, and report and promotion time against the number of runs.

    python benchmarks/scaling.py                 # every section, real Fashion-MNIST from Debian
    python benchmarks/scaling.py --sections workers --steps 600
    python benchmarks/scaling.py --sections memory,reports --jobs 50 --runs 100,1000,5000
    python benchmarks/scaling.py --sections liveness --runs 5000

`launchers`: wall time of one 4-job sweep (2 policies x 2 batch sizes) with Hydra's basic launcher
and with joblib (2 workers), each on a fresh SQLite store, commands run one after the other.
`workers`: the same training job (global batch, seed, steps) as one process (distribute=none)
and as 2 local worker processes (distribute=multi_worker, TF_CONFIG on 127.0.0.1 ports):
wall time, the chief's train/examples_per_sec and eval/accuracy from MLflow.
`memory`: one sweep of --jobs short jobs in one process (the basic launcher), cycling through 5 batch
sizes: each job's peak memory (reset per job), the resident set and tensor bytes it leaves behind
(job/*_at_end) with their per-job slopes after the first cycle, and where a short job's time goes.
`reports`: synthetic sweeps of --runs runs (made through the MLflow client, no training) on SQLite
and on an MLflow server backed by PostgreSQL: time to build the report and to read the
promotion candidates, and the store's size.
`liveness`: the search every command makes for runs of processes killed hard, across all
experiments of SQLite stores of --runs runs.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "benchmarks")]
from printing import print_table  # noqa: E402

from pipeline.testing import (  # noqa: E402
    MODEL_NAME,
    Store,
    free_ports,
    mlflow_server,
    postgres_server,
    synthetic_sweep,
)


def run(arguments: list[str], cwd: pathlib.Path, environment: dict | None = None) -> subprocess.Popen:
    environment = os.environ | {"PYTHONPATH": str(REPO_ROOT)} | (environment or {})
    return subprocess.Popen([sys.executable, "-m", "pipeline", *arguments], cwd=cwd, env=environment,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_all(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        _, errors = process.communicate()
        if process.returncode:
            raise SystemExit(f"a benchmark job failed:\n{errors[-3000:]}")


def store_arguments(folder: pathlib.Path, idx_dir: str) -> list[str]:
    return [*Store(folder).overrides, "tracking.registered_model=null", "data=fashion_mnist", "data.source=idx",
            f"data.idx_dir={idx_dir}"]


def section_launchers(scratch: pathlib.Path, arguments) -> list[dict]:
    idx_dir, steps = arguments.idx_dir, arguments.steps
    sweep = ["-m", "precision=float32,mixed_bfloat16", "data.batch_size=64,128", f"train.max_steps={steps}",
             "infer.latency_runs=50", "infer.throughput_runs=5"]
    rows = []
    for name, launcher in (("basic", []), ("joblib, 2 workers", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])):
        folder = scratch / name.split(",")[0]
        folder.mkdir()
        started = time.perf_counter()
        wait_all([run([*sweep, *launcher, *store_arguments(folder, idx_dir)], folder)])
        rows.append({"launcher": name, "jobs": 4, "wall_s": time.perf_counter() - started})
    for row in rows:
        row["speedup"] = rows[0]["wall_s"] / row["wall_s"]
    return rows


def section_workers(scratch: pathlib.Path, arguments) -> list[dict]:
    idx_dir, steps = arguments.idx_dir, arguments.steps
    job = [f"train.max_steps={steps}", "data.batch_size=128", "stages=[train,evaluate]"]
    rows = []
    for workers in (1, 2):
        folder = scratch / f"workers{workers}"
        folder.mkdir()
        arguments = [*job, *store_arguments(folder, idx_dir)]
        started = time.perf_counter()
        if workers == 1:
            wait_all([run(arguments, folder)])
        else:
            ports = free_ports(workers)
            wait_all([run([*arguments, "distribute=multi_worker", f"hydra.run.dir={folder}/worker{index}"], folder, {
                "TF_CONFIG": json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                                         "task": {"type": "worker", "index": index}})}) for index in range(workers)])
        wall_seconds = time.perf_counter() - started
        metrics = Store(folder).only_run().data.metrics  # the chief's run
        rows.append({"workers": workers, "global_batch": 128, "steps": int(metrics["train/steps"]),
                     "wall_s": wall_seconds, "train_examples_per_sec": metrics["train/examples_per_sec"],
                     "step_time_ms": metrics["train/step_time_ms"], "eval_accuracy": metrics["eval/accuracy"]})
    return rows


def section_memory(scratch: pathlib.Path, arguments) -> dict:
    import numpy as np

    idx_dir, batch_sizes = arguments.idx_dir, (32, 64, 128, 256, 512)
    cycles = max(2, arguments.jobs // len(batch_sizes))  # the batch size varies fastest: jobs cycle through them

    started = time.perf_counter()
    wait_all([run(["-m", f"train.seed=range({cycles})", f"data.batch_size={','.join(map(str, batch_sizes))}",
                   "train.max_steps=30", *store_arguments(scratch, idx_dir)], scratch)])
    wall_seconds = time.perf_counter() - started
    children = sorted(Store(scratch).sweep()[1], key=lambda child: child.info.start_time)
    peaks = [child.data.metrics["train/peak_memory_mb"] for child in children]
    # What each job leaves behind, from the second cycle on (the first builds each configuration's programs).
    later = np.arange(len(batch_sizes), len(children))
    left = {name: [child.data.metrics[f"job/{name}_at_end"] for child in children] for name in ("rss_mb", "tensor_mb")}
    slopes = {f"{name}_at_end_slope_per_job": float(np.polyfit(later, np.array(values)[later], 1)[0])
              for name, values in left.items()}
    parts = {}
    for child in children[1:]:  # the first job pays the imports and compiles no later job pays
        for name, value in child.data.metrics.items():
            if name.startswith("job/seconds/"):
                parts.setdefault(name.removeprefix("job/seconds/"), []).append(value)
        parts.setdefault("run start and end", []).append(
            (child.info.end_time - child.info.start_time) / 1000 - sum(
                value for name, value in child.data.metrics.items() if name.startswith("job/seconds/")))
    return {"jobs": len(children), "batch_sizes": batch_sizes, "wall_s": wall_seconds, "peak_memory_mb": peaks,
            **{f"{name}_at_end": values for name, values in left.items()}, **slopes,
            "slope_mb_per_job": float(np.polyfit(np.arange(1, len(peaks)), peaks[1:], 1)[0]),
            "second_job_mb": peaks[1], "last_job_mb": peaks[-1],
            "seconds_per_part": {name: float(np.median(values)) for name, values in parts.items()}}


def section_reports(scratch: pathlib.Path, arguments) -> list[dict]:
    run_counts = [int(count) for count in arguments.runs.split(",")]
    rows = []
    with postgres_server() as (database_uri, _), mlflow_server(database_uri, scratch / "server-artifacts") as url:
        for store_name, uri in (("SQLite", f"sqlite:///{scratch}/mlflow.db"), ("PostgreSQL via mlflow server", url)):
            for count in run_counts:
                rows.append(_time_report(store_name, uri, count, scratch))
                print(rows[-1], flush=True)
    return rows


def _time_report(store_name: str, uri: str, count: int, scratch: pathlib.Path) -> dict:
    from pipeline import promote
    from pipeline.analysis import champion
    from pipeline.core import config
    from pipeline.report import write_report
    from pipeline.tracking import store

    tracking_config = config.compose([f"tracking.uri={uri}", f"tracking.artifact_root={scratch}/artifacts",
                                      f"tracking.experiment=scale-{count}",
                                      f"tracking.registered_model={MODEL_NAME}-{count}"], config_name="report").tracking
    experiment_id = store.prepare(tracking_config)
    started = time.perf_counter()
    parent_id = synthetic_sweep(store.client(uri), experiment_id, count, register_as=tracking_config.registered_model)
    create_seconds = time.perf_counter() - started
    parent = store.client(uri).get_run(parent_id)
    started = time.perf_counter()
    report = write_report(tracking_config, parent, scratch / f"report-{store_name[:6]}-{count}")
    report_seconds = time.perf_counter() - started
    started = time.perf_counter()
    candidates = promote.sweep_candidates(tracking_config, tracking_config.registered_model, parent,
                                          "infer/examples_per_sec")
    champion.choose_champion(candidates, config.compose([], config_name="promote").rule)
    promote_seconds = time.perf_counter() - started
    database = scratch / "mlflow.db"
    return {"store": store_name, "runs": count, "jobs_in_report": sum(row["n"] for row in report.rows),
            "candidates": len(candidates), "create_s": create_seconds, "report_s": report_seconds,
            "promotion_s": promote_seconds,
            "sqlite_mb": database.stat().st_size / 2**20 if store_name == "SQLite" else None}


def section_liveness(scratch: pathlib.Path, arguments) -> list[dict]:
    """What every command pays to find runs of processes killed hard: the store-wide search, on SQLite
    stores of --runs finished runs spread over 5 experiments, with one dead run among them."""
    import mlflow
    import numpy as np

    from pipeline.tracking import liveness

    rows = []
    for count in [int(count) for count in arguments.runs.split(",")]:
        client = mlflow.MlflowClient(f"sqlite:///{scratch}/liveness-{count}.db")
        experiments = [client.create_experiment(f"team-{index}") for index in range(5)]
        for index, experiment_id in enumerate(experiments):
            synthetic_sweep(client, experiment_id, count // len(experiments), seed=index)
        dead = liveness.process_tags() | {liveness.PID_TAG: "999999999"}
        client.create_run(experiments[-1], run_name="killed", tags=dead)
        seconds = []
        for _ in range(5):
            started = time.perf_counter()
            ended = liveness.end_runs_of_dead_processes(client)
            seconds.append(time.perf_counter() - started)
        rows.append({"runs": count, "experiments": len(experiments), "first_ms": seconds[0] * 1000,
                     "median_ms": float(np.median(seconds[1:]) * 1000), "ended_by_the_last": len(ended)})
        print(rows[-1], flush=True)
    return rows


SECTIONS = {"launchers": section_launchers, "workers": section_workers, "memory": section_memory,
            "reports": section_reports, "liveness": section_liveness}
TABLES = {
    "launchers": ("The same 4-job sweep (float32, mixed_bfloat16 x batch 64, 128) per Hydra launcher", {
        "launcher": "{launcher}", "jobs": "{jobs}", "wall time s": "{wall_s:.1f}", "speedup": "{speedup:.2f}x"}),
    "workers": ("One training job (global batch 128, same seed and steps) on 1 process vs 2 workers", {
        "workers": "{workers}", "steps": "{steps}", "wall time s": "{wall_s:.1f}",
        "train examples/s": "{train_examples_per_sec:,.0f}", "step ms": "{step_time_ms:.2f}",
        "eval accuracy": "{eval_accuracy:.4f}"}),
    "reports": ("Report and promotion time against the number of runs (synthetic sweeps)", {
        "store": "{store}", "runs": "{runs:,}", "jobs in report": "{jobs_in_report:,}",
        "versions read": "{candidates:,}", "report s": "{report_s:.1f}", "promotion s": "{promotion_s:.1f}",
        "making the runs s": "{create_s:.0f}"}),
    "liveness": ("Finding runs of processes killed hard, every experiment of a SQLite store", {
        "runs": "{runs:,}", "experiments": "{experiments}", "first search (ends 1) ms": "{first_ms:.1f}",
        "later searches ms (median of 4)": "{median_ms:.1f}"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per job")
    parser.add_argument("--idx-dir", default="/usr/share/datasets/fashion-mnist", help="real images, IDX format")
    parser.add_argument("--jobs", type=int, default=50, help="jobs in the memory section's sweep")
    parser.add_argument("--runs", default="100,1000,5000", help="comma-separated run counts for the reports section")
    parser.add_argument("--json", default="outputs/scaling.json", help="where to write the figures")
    arguments = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="scaling-") as scratch:
        for name in arguments.sections.split(","):
            section_dir = pathlib.Path(scratch) / name
            section_dir.mkdir()
            results[name] = SECTIONS[name](section_dir, arguments)
            if name in TABLES:
                print_table(*TABLES[name], results[name])
            else:
                print(f"\n{name}: {json.dumps(results[name], indent=1)}")
    pathlib.Path(arguments.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(arguments.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
