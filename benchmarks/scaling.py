"""Scaling figures, side by side in one run: the same sweep per launcher, training on 1 vs 2 workers.

    python benchmarks/scaling.py                 # both sections, real Fashion-MNIST from Debian
    python benchmarks/scaling.py --sections workers --steps 600

`launchers`: wall time of one 4-job sweep (2 policies x 2 batch sizes) with Hydra's basic launcher
and with joblib (2 workers), each on a fresh SQLite store, commands run one after the other.
`workers`: the same training job (global batch, seed, steps) as one process (distribute=none)
and as 2 local worker processes (distribute=multi_worker, TF_CONFIG on 127.0.0.1 ports):
wall time, the chief's train/examples_per_sec and eval/accuracy from MLflow.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "benchmarks"), str(REPO_ROOT / "tests")]
from helpers import Store, free_ports, python_environment  # noqa: E402  the tests' helpers: one home
from tables import print_table  # noqa: E402


def run(arguments: list[str], cwd: pathlib.Path, environment: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", *arguments], cwd=cwd,
                            env=python_environment(environment), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_all(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        _, errors = process.communicate()
        if process.returncode:
            raise SystemExit(f"a benchmark job failed:\n{errors[-3000:]}")


def store_arguments(folder: pathlib.Path, idx_dir: str) -> list[str]:
    return [*Store(folder).overrides, "tracking.registered_model=null", "data=fashion_mnist", "data.source=idx",
            f"data.idx_dir={idx_dir}"]


def section_launchers(scratch: pathlib.Path, idx_dir: str, steps: int) -> list[dict]:
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


def section_workers(scratch: pathlib.Path, idx_dir: str, steps: int) -> list[dict]:
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


SECTIONS = {"launchers": section_launchers, "workers": section_workers}
TABLES = {
    "launchers": ("The same 4-job sweep (float32, mixed_bfloat16 x batch 64, 128) per Hydra launcher", {
        "launcher": "{launcher}", "jobs": "{jobs}", "wall time s": "{wall_s:.1f}", "speedup": "{speedup:.2f}x"}),
    "workers": ("One training job (global batch 128, same seed and steps) on 1 process vs 2 workers", {
        "workers": "{workers}", "steps": "{steps}", "wall time s": "{wall_s:.1f}",
        "train examples/s": "{train_examples_per_sec:,.0f}", "step ms": "{step_time_ms:.2f}",
        "eval accuracy": "{eval_accuracy:.4f}"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per job")
    parser.add_argument("--idx-dir", default="/usr/share/datasets/fashion-mnist", help="real images, IDX format")
    parser.add_argument("--json", default="outputs/scaling.json", help="where to write the figures")
    arguments = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="scaling-") as scratch:
        for name in arguments.sections.split(","):
            section_dir = pathlib.Path(scratch) / name
            section_dir.mkdir()
            results[name] = SECTIONS[name](section_dir, arguments.idx_dir, arguments.steps)
            print_table(*TABLES[name], results[name])
    pathlib.Path(arguments.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(arguments.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
