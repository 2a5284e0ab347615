"""What the study harness costs: the same N trials through run_study (Ray Tune, N at a
time = concurrency) against a plain loop of ae4ad.fit in one process.

    nice python benchmarks/study_overhead.py                 # 4 trials, 2 at a time
    nice python benchmarks/study_overhead.py --epochs 30 --trials 6

Prints wall(harness), wall(sequential) and the ratio
wall(harness) / (wall(sequential) / concurrency): 1.00 means the harness runs the trials
as fast as a perfect parallel split of the sequential loop; the target is <= 1.10. The
harness's wall time includes everything a user waits for: building the data set,
starting and stopping the embedded Ray, worker start-up and writing the tables (the
report is left out). Trials should take >= 20 s each for the figure to mean something
(start-up is paid once per run, not per trial). Run it when the machine is quiet: other
work on the cores skews both sides.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study.runner import RunOptions, prepare_environment  # noqa: E402
from study.space import fit_config, grid_trials, validate_space  # noqa: E402


def make_space(args: argparse.Namespace, storage: Path):
    latent_dims = [2 ** (i + 2) for i in range(args.trials)]  # 4, 8, 16, ...
    raw = {
        "name": "overhead",
        "storage_path": str(storage),
        "datasets": [
            {
                "name": "phantom",
                "params": {
                    "image_size": args.image_size,
                    "n_train": args.n_train,
                    "n_val": 100,
                    "n_test_normal": 200,
                    "n_test_abnormal": 200,
                },
            }
        ],
        "models": [{"name": "ae", "params": {"latent_dim": latent_dims, "num_blocks": 3}}],
        "training": {"epochs": args.epochs, "eval_every": max(1, args.epochs // 4)},
        "seeds": [0],
        "resources": {
            "cpus_per_trial": 1,
            "gpus_per_trial": 0,
            "max_concurrent_trials": args.concurrency,
        },
    }
    return validate_space(raw, file_name="overhead")


def run_sequential(space) -> tuple[float, list[float]]:
    import torch

    import ae4ad

    torch.set_num_threads(1)
    started = time.perf_counter()
    spec = space.datasets[0]
    data = ae4ad.load_dataset(spec.name, **spec.params)
    per_trial = []
    for config in grid_trials(space):
        t0 = time.perf_counter()
        for _ in ae4ad.fit({**fit_config(config), "threads": 1}, dataset=data):
            pass
        per_trial.append(time.perf_counter() - t0)
    return time.perf_counter() - started, per_trial


def run_harness(space, concurrency: int) -> tuple[float, list[float]]:
    import pandas as pd

    from study.runner import run_study

    started = time.perf_counter()
    run_study(
        space,
        RunOptions(num_cpus=concurrency, report=False, progress_interval_s=3600, out=io.StringIO()),
    )
    wall = time.perf_counter() - started
    trials = pd.read_parquet(space.run_dir / "trials.parquet")
    assert (trials["status"] == "completed").all(), trials[["trial_id", "status", "error"]]
    return wall, trials["elapsed_s"].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=1000)
    args = parser.parse_args()
    prepare_environment(local=True)

    with tempfile.TemporaryDirectory(prefix="ae4ad-overhead-") as tmp:
        space = make_space(args, Path(tmp))
        load = os.getloadavg()[0]
        seq_wall, seq_trials = run_sequential(space)
        print(
            f"sequential: {args.trials} trials in {seq_wall:.1f} s "
            f"(per trial {min(seq_trials):.1f}-{max(seq_trials):.1f} s; "
            f"load average {load:.1f} -> {os.getloadavg()[0]:.1f})",
            flush=True,
        )
        load = os.getloadavg()[0]
        h_wall, h_trials = run_harness(space, args.concurrency)
        print(
            f"harness:    {args.trials} trials, {args.concurrency} at a time, in {h_wall:.1f} s "
            f"(fit per trial {min(h_trials):.1f}-{max(h_trials):.1f} s; "
            f"load average {load:.1f} -> {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    ideal = seq_wall / args.concurrency
    ratio = h_wall / ideal
    outside = h_wall - sum(h_trials) / args.concurrency
    print(f"wall(harness)    = {h_wall:.1f} s")
    print(f"wall(sequential) = {seq_wall:.1f} s")
    print(
        f"ratio wall(harness) / (wall(sequential) / {args.concurrency}) = {ratio:.3f} "
        f"(target <= 1.10: {'met' if ratio <= 1.10 else 'not met'})"
    )
    print(
        f"harness time outside ae4ad.fit: {outside:.1f} s (Ray start/stop, worker start-up, "
        "data set, tables); fit itself ran "
        f"{sum(h_trials) / max(1e-9, sum(seq_trials)):.2f}x as long as in the sequential loop "
        "(> 1: the trials competed for cores)"
    )


if __name__ == "__main__":
    main()
