"""``python -m study.report RUN_DIR [--entropy COL] [--alpha A]``: (re)write the report
of a run folder."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from study.report import ENTROPY_LABELS, write_report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m study.report", description="Write report.html of a study run."
    )
    p.add_argument("run_dir", type=Path, help="runs/<study name>/")
    p.add_argument("--entropy", default="latent_entropy_gaussian", choices=list(ENTROPY_LABELS))
    p.add_argument("--alpha", type=float, default=0.05, help="level of the verdicts")
    args = p.parse_args(argv)
    try:
        started = time.perf_counter()
        out = write_report(args.run_dir, entropy_col=args.entropy, alpha=args.alpha)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = out.stat().st_size / 1e6
    print(f"wrote {out} ({size:.1f} MB, {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
