"""The evidence behind train.divergence_factor: how far the loss of healthy runs rises above its
starting level, and how fast it does in runs whose learning rate is far too high.

    python benchmarks/divergence.py            # about 10 minutes on 2 cores, real Fashion-MNIST
    python benchmarks/divergence.py --quick

Every run trains one epoch (exploding runs at most 300 steps) with the divergence check off and
every step's loss recorded; the starting level is what the check uses (the first step's loss, at
least ln 10). Prints, per run, the largest loss / starting level and, for exploding runs, the first
step past 10x and 100x.
"""

import argparse
import json
import math
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "benchmarks")]

import numpy as np  # noqa: E402
from printing import print_table  # noqa: E402

from pipeline.core import config, data, model, precision  # noqa: E402
from pipeline.stages import train  # noqa: E402

HEALTHY_RATES = (1e-4, 1e-3, 1e-2)  # the Optuna search's range and the default
EXPLODING_RATES = (0.3, 3.0, 30.0)


def loss_growth(datasets, model_name: str, policy: str, learning_rate: float, max_steps: int | None,
                scratch: str) -> dict:
    composed = config.compose([
        f"model={model_name}", f"train.learning_rate={learning_rate}", "train.log_every_steps=1",
        "train.divergence_factor=null", f"train.max_steps={max_steps or 'null'}", f"export.dir={scratch}/export",
        f"train.checkpoint_dir={scratch}/checkpoints", f"train.jit_cache_file={scratch}/jit.json"])
    points = []
    try:
        train.train(model.build_model(composed.model, policy, seed=0), datasets, composed.train, policy,
                    log_metric=lambda name, new_points: points.extend(new_points))
        status = "finished"
    except train.TrainingDivergedError as error:  # NaN or inf: stops whatever the factor
        status = f"stopped: {str(error).split(';')[0]}"
    losses = np.array([value for _, value in sorted(points)])
    start = max(losses[0], math.log(10))  # chance on Fashion-MNIST's 10 classes
    ratios = np.nan_to_num(losses / start, nan=np.inf)

    def first_step_over(factor):
        over = np.flatnonzero(ratios > factor)
        return int(over[0]) + 1 if over.size else None

    return {"model": model_name, "policy": policy, "batch_size": datasets.batch_size, "learning_rate": learning_rate,
            "steps": len(losses), "start_loss": float(start), "max_ratio": float(ratios.max()),
            "final_loss": float(losses[-1]), "first_step_over_10x": first_step_over(10),
            "first_step_over_100x": first_step_over(100), "status": status}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 256 only, 200 steps a run")
    parser.add_argument("--idx-dir", default="/usr/share/datasets/fashion-mnist", help="real images, IDX format")
    parser.add_argument("--json", default="outputs/divergence.json", help="where to write the figures")
    arguments = parser.parse_args()
    splits = {split: data.read_idx_split(arguments.idx_dir, split) for split in ("train", "test")}
    scratch = tempfile.mkdtemp(prefix="divergence-")
    rows = []
    for batch_size in (256,) if arguments.quick else (32, 256):
        datasets = data.Datasets(splits["train"], splits["test"], batch_size, num_classes=10)
        for model_name in ("mlp", "cnn"):
            for policy in precision.POLICIES:
                for rate in HEALTHY_RATES + EXPLODING_RATES:
                    exploding = rate in EXPLODING_RATES
                    steps = 200 if arguments.quick else (300 if exploding else None)
                    rows.append(loss_growth(datasets, model_name, str(policy), rate, steps, scratch))
                    print(json.dumps(rows[-1]), flush=True)
    print_table("Largest loss / starting level per run (one epoch; learning rates >= 0.3 at most 300 steps)", {
        "model": "{model}", "policy": "{policy}", "batch": "{batch_size}", "learning rate": "{learning_rate:g}",
        "steps": "{steps}", "start": "{start_loss:.3f}", "max / start": "{max_ratio:.3g}",
        "first step > 10x": "{first_step_over_10x}", "first step > 100x": "{first_step_over_100x}",
        "end": "{status}",
    }, rows)
    path = pathlib.Path(arguments.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
