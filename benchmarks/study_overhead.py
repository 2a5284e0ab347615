"""What the study harness costs: the same N trials through run_study (Ray Tune, N at a
time = concurrency) against a plain loop of ae4ad.fit in one process.

    nice python benchmarks/study_overhead.py                 # 4 trials, 2 at a time
    nice python benchmarks/study_overhead.py --epochs 40 --trials 6

Each side runs in a fresh Python process and is timed from its start to its end, as a
user would wait for it: the sequential side imports ae4ad, builds the data set and trains
the trials one after the other with torch threads 1; the harness side imports the study
package, builds the data set, starts the embedded Ray, runs the trials (cpus_per_trial 1,
``concurrency`` at a time), writes the tables (no report) and stops Ray.

Prints wall(harness), wall(sequential) and the ratio
wall(harness) / (wall(sequential) / concurrency): 1.00 means the harness runs the trials
as fast as a perfect parallel split of the sequential loop; the target is <= 1.10. Also
printed: the ratio of the trials phase alone (Ray Tune running the trials, without
starting and stopping Ray), and how much longer ae4ad.fit itself ran under the harness
(> 1 when the trials competed for cores with each other or with other work on the
machine). Trials should take >= 20 s each: start-up is paid once per run, not per trial.
Run it when the machine is quiet.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_space(args: argparse.Namespace, storage: Path):
    from study.space import validate_space

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


def side_sequential(args: argparse.Namespace, storage: Path) -> dict:
    import torch

    import ae4ad
    from study.space import fit_config, grid_trials

    torch.set_num_threads(1)
    space = make_space(args, storage)
    spec = space.datasets[0]
    data = ae4ad.load_dataset(spec.name, **spec.params)
    fit_s = []
    for config in grid_trials(space):
        t0 = time.perf_counter()
        for _ in ae4ad.fit({**fit_config(config), "threads": 1}, dataset=data):
            pass
        fit_s.append(time.perf_counter() - t0)
    return {"fit_s": fit_s}


def side_harness(args: argparse.Namespace, storage: Path) -> dict:
    from study.runner import RunOptions, prepare_environment

    prepare_environment(local=True)
    import pandas as pd

    from study.runner import run_study

    space = make_space(args, storage)
    result = run_study(
        space,
        RunOptions(
            num_cpus=args.concurrency, report=False, progress_interval_s=3600, out=io.StringIO()
        ),
    )
    trials = pd.read_parquet(space.run_dir / "trials.parquet")
    if not (trials["status"] == "completed").all():
        raise SystemExit(str(trials[["trial_id", "status", "error"]]))
    return {"fit_s": trials["elapsed_s"].tolist(), "trials_wall_s": result.trials_wall_s}


def run_side(side: str, argv: list[str]) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory(prefix="ae4ad-overhead-") as tmp:
        out = Path(tmp) / "out.json"
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, *argv, "--side", side, "--out", str(out)],
            check=True,
            cwd=REPO,
        )
        wall = time.perf_counter() - started
        return wall, json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--side", choices=("sequential", "harness"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side:  # one side, in its own process
        storage = Path(args.out).parent / "runs"
        data = (side_sequential if args.side == "sequential" else side_harness)(args, storage)
        Path(args.out).write_text(json.dumps(data))
        return

    argv = [
        f"--trials={args.trials}",
        f"--concurrency={args.concurrency}",
        f"--epochs={args.epochs}",
        f"--image-size={args.image_size}",
        f"--n-train={args.n_train}",
    ]
    load = os.getloadavg()[0]
    seq_wall, seq = run_side("sequential", argv)
    print(
        f"sequential: {args.trials} trials in {seq_wall:.1f} s (fit per trial "
        f"{min(seq['fit_s']):.1f}-{max(seq['fit_s']):.1f} s; load average {load:.1f} -> "
        f"{os.getloadavg()[0]:.1f})",
        flush=True,
    )
    load = os.getloadavg()[0]
    h_wall, h = run_side("harness", argv)
    print(
        f"harness:    {args.trials} trials, {args.concurrency} at a time, in {h_wall:.1f} s "
        f"(fit per trial {min(h['fit_s']):.1f}-{max(h['fit_s']):.1f} s; load average "
        f"{load:.1f} -> {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    ideal = seq_wall / args.concurrency
    print(f"wall(harness)    = {h_wall:.1f} s")
    print(f"wall(sequential) = {seq_wall:.1f} s")
    ratio = h_wall / ideal
    print(
        f"ratio wall(harness) / (wall(sequential) / {args.concurrency}) = {ratio:.3f} "
        f"(target <= 1.10: {'met' if ratio <= 1.10 else 'not met'})"
    )
    print(
        f"trials phase only (Ray Tune running the trials): {h['trials_wall_s']:.1f} s, "
        f"ratio {h['trials_wall_s'] / ideal:.3f}"
    )
    print(
        "ae4ad.fit ran "
        f"{sum(h['fit_s']) / max(1e-9, sum(seq['fit_s'])):.2f}x as long under the harness "
        "as in the sequential loop (> 1: the trials competed for cores)"
    )


if __name__ == "__main__":
    main()
