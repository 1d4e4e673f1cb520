"""Training throughput while the tracking server is up, gone, and with asynchronous logging off: ratios in one run.

    python benchmarks/outage.py [--repeats 3] [--epochs 2] [--patience 5]

A real `mlflow server` on 127.0.0.1 (SQLite behind it, as the tests run it). Each variant trains the same
CNN steps (batch 128, 468 steps an epoch) in the pipeline's loop, logging train/loss to a run on that
server once an epoch as a job does: through MLflow's queue (the pipeline's way), or synchronously
("async off"). "gone" stops the server after the run started on it, before training: the job keeps its
run offline after tracking.patience_s. Each figure is examples per second over the whole train() call
(logging happens between the timed calls), the compiling calls' time left out; variants alternate, and
the medians are compared with "up" (the queue, the server answering).
"""

import argparse
import contextlib
import json
import pathlib
import statistics
import time

from benchmark import SCRATCH, train_pipeline

from pipeline.core import config, data, precision
from pipeline.testing import free_ports, mlflow_server
from pipeline.tracking import runs

VARIANTS = {"up": (True, False), "up, async off": (True, True), "gone": (False, False),
            "gone, async off": (False, True)}  # label: (server answering, synchronous logging)


def measure(split, label: str, stack: contextlib.ExitStack, url: str, server_answering: bool, synchronous: bool,
            steps: int, patience_s: float, repeat: int) -> tuple[float, float]:
    """One variant's examples per second, and the seconds its training loop spent in the logging calls;
    `stack` holds the server, closed (stopped) for a "gone" variant."""
    # Composed here, not with benchmark.compose: that one points tracking.uri at a scratch SQLite store.
    tracking = config.compose(["tracking=server", f"tracking.uri={url}", f"tracking.patience_s={patience_s}",
                               f"tracking.offline_dir={SCRATCH}/offline-{label.replace(', ', '-')}-{repeat}"]).tracking
    waited = []

    def sink(name, points):
        started = time.perf_counter()
        runs.log_metric_history(name, points, synchronous=synchronous)
        waited.append(time.perf_counter() - started)

    with runs.start_run(tracking, label, {}):
        if not server_answering:
            stack.close()
        started = time.perf_counter()
        trained = train_pipeline(split, "cnn", precision.REFERENCE, 128, steps, "false", log_metric=sink)
        seconds = time.perf_counter() - started - trained.warmup_seconds  # compiling calls left out, as in the job
    return steps * 128 / seconds, sum(waited)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant (alternating)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs a run (468 steps each)")
    parser.add_argument("--patience", type=float, default=5.0, help="tracking.patience_s")
    parser.add_argument("--idx-dir", default="/usr/share/datasets/fashion-mnist", help="real images, IDX format")
    parser.add_argument("--json", default="outputs/outage.json", help="where to write the figures")
    arguments = parser.parse_args()
    split = data.read_idx_split(arguments.idx_dir, "train")
    up_port, gone_port = free_ports(2)
    examples_per_sec = {label: [] for label in VARIANTS}
    waited_s = {label: [] for label in VARIANTS}
    # "up" runs log to one server, started before and idle between runs; each "gone" run to a server of its own,
    # stopped once the run started (the "up" server idles on meanwhile: the same load for every variant).
    with mlflow_server(f"sqlite:///{SCRATCH}/up.db", SCRATCH / "up-artifacts", up_port) as up_url:
        time.sleep(5)
        for repeat in range(arguments.repeats):
            for label, (server_answering, synchronous) in VARIANTS.items():
                with contextlib.ExitStack() as stack:
                    url = up_url if server_answering else stack.enter_context(
                        mlflow_server(f"sqlite:///{SCRATCH}/gone.db", SCRATCH / "gone-artifacts", gone_port))
                    rate, waited = measure(split, label, stack, url, server_answering, synchronous,
                                           arguments.epochs * 468, arguments.patience, repeat)
                examples_per_sec[label].append(rate)
                waited_s[label].append(waited)
                print(f"{label:>16}: {rate:,.0f} examples/s, {waited:.3f} s in logging calls", flush=True)
    medians = {label: statistics.median(values) for label, values in examples_per_sec.items()}
    print(f"\n{'variant':>16} | median examples/s | vs up | loop's seconds in logging calls (median) | runs")
    for label, median in medians.items():
        values = ", ".join(f"{value:,.0f}" for value in examples_per_sec[label])
        print(f"{label:>16} | {median:17,.0f} | {median / medians['up']:.3f}x | "
              f"{statistics.median(waited_s[label]):.3f} | {values}")
    result = {"examples_per_sec": examples_per_sec, "waited_s": waited_s,
              "ratio_to_up": {label: median / medians["up"] for label, median in medians.items()},
              "steps": arguments.epochs * 468, "patience_s": arguments.patience}
    pathlib.Path(arguments.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(arguments.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
