"""How long write_report takes and how big the page gets, on synthetic runs.

Builds a 200-trial run (5 data sets x 8 latent_dims x 5 seeds) and a 1,000-trial run
(5 data sets x 5 models x 8 latent_dims x 5 seeds), each with history, scores, examples
and a few early-stopped trials, then times ``write_report`` (imports excluded; the first
call also warms caches, so the best of ``--repeat`` calls is printed beside the first).

Targets: under 10 MB for 200 trials; under 10 s for 1,000 trials.

The runs are written by ``tests/helpers/synthetic.py`` through ``study.results``' own
writers (so "build s" is the time of those writers, not of the report). ``--runs DIR``
times the report on the ``bench200`` and ``bench1000`` folders an earlier ``--keep DIR``
left (the same input for two versions of the code).

Run: ``python benchmarks/report_speed.py [--repeat 2] [--keep DIR | --runs DIR]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study.report import write_report  # noqa: E402
from tests.helpers.synthetic import make_synthetic_run  # noqa: E402

CASES = {
    200: dict(datasets=("RSNA", "VinDr-CXR", "BrainTumor", "BraTS2021", "phantom-k6"), seeds=5),
    1000: dict(
        datasets=("RSNA", "VinDr-CXR", "BrainTumor", "BraTS2021", "phantom-k6"),
        models=("ae", "vae", "memae", "ceae", "constrained_ae"),
        seeds=5,
    ),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--keep", type=Path, default=None, help="write the runs here and keep them")
    p.add_argument("--runs", type=Path, default=None, help="time the runs a --keep left here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ae4ad-report-bench-") as tmp:
        run_cases(args.runs or args.keep or Path(tmp), args.repeat, build=args.runs is None)


def run_cases(root: Path, repeat: int, build: bool = True) -> None:
    print(f"{'trials':>7} {'build s':>8} {'first s':>8} {'best s':>7} {'MB':>6}  run")
    for n, spec in CASES.items():
        spec = dict(spec)
        seeds = range(spec.pop("seeds"))
        t0 = time.perf_counter()
        run = root / f"bench{n}"
        if build:
            make_synthetic_run(run, seeds=seeds, extra_statuses={"early-stopped": 5}, **spec)
        built = time.perf_counter() - t0
        times = []
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            out = write_report(run)
            times.append(time.perf_counter() - t0)
        mb = out.stat().st_size / 1e6
        print(f"{n:>7} {built:>8.1f} {times[0]:>8.2f} {min(times):>7.2f} {mb:>6.2f}  {out}")


if __name__ == "__main__":
    main()
