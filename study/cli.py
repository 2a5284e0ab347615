"""Command line of the study harness (``python run_study.py`` or ``ae4ad-study``).

    python run_study.py --space latent.yaml              # run (bare names: search_spaces/)
    python run_study.py --space latent.yaml --dry-run    # validate and print the plan
    python run_study.py --space latent.yaml --resume     # continue an interrupted run
    python run_study.py --space latent.yaml --override training.epochs=5 --override seeds=[0]
    python run_study.py --space paper.yaml --address 10.0.0.5:6379   # join a Ray cluster
    python run_study.py --report-only runs/latent        # rebuild the report from tables

A user's mistake (a bad space, results already there, resources the cluster lacks,
data that cannot be loaded) prints ``error: <message>`` on stderr and exits with 2,
before Ray starts where it can. An interrupted run (Ctrl-C, SIGTERM) exits with 130
after saving what finished. See docs/running.md.

Example:
    >>> main(["--space", "smoke", "--dry-run"])  # doctest: +ELLIPSIS
    study smoke: 2 trials (grid) in 1 stratum
    ...
    0
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the command line."""
    parser = argparse.ArgumentParser(
        prog="run_study.py",
        description=(
            "Run a study of reconstruction-based anomaly detection: a YAML search space -> "
            "Ray Tune trials (+ Optuna) -> results tables and a report in "
            "<storage_path>/<study name>/."
        ),
        epilog="Details: docs/running.md",
    )
    parser.add_argument(
        "--space",
        metavar="YAML",
        help="the search space: a path, or a bare name looked up in search_spaces/ "
        "(e.g. latent.yaml or latent)",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one setting of the space, value parsed as YAML; repeatable "
        "(e.g. training.epochs=5, seeds=[0], models[0].params.latent_dim=[4,8], name=try2)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the study's folder: finished trials are kept and not run again",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the space and print the trial plan, without running anything",
    )
    parser.add_argument(
        "--report-only",
        metavar="RUN_DIR",
        help="rebuild the report of a run folder from its stored tables, without running",
    )
    parser.add_argument(
        "--address",
        metavar="ADDR",
        default=None,
        help="join this Ray cluster (default: $RAY_ADDRESS, else an embedded Ray that "
        "listens on 127.0.0.1 only)",
    )
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="start Ray's dashboard with the embedded Ray (on 127.0.0.1)",
    )
    parser.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        metavar="N",
        help="CPUs the embedded Ray may use (default: all of this machine's)",
    )
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=None,
        metavar="N",
        help="GPUs the embedded Ray may use (default: all of this machine's)",
    )
    parser.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between progress summary lines (default 10); a line is also "
        "printed for every finished trial",
    )
    parser.add_argument(
        "--no-report",
        action="store_true",
        help="write the tables only, not the report",
    )
    return parser


def _error(message: str) -> int:
    text = " ".join(str(message).split())  # one line
    print(f"error: {text}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def _report_only(run_dir: str) -> int:
    path = Path(run_dir)
    if not (path / "trials.parquet").is_file():
        return _error(f"{run_dir}: not a run folder (no trials.parquet in it)")
    from study.report import write_report

    report = write_report(path)
    print(f"report: {report}", flush=True)
    return EXIT_OK


def _dry_run(space) -> int:  # noqa: ANN001
    from study.results import read_trials
    from study.space import estimate_plan, format_plan

    plan = estimate_plan(space)
    print(format_plan(plan), flush=True)
    trials = read_trials(space.run_dir)
    if trials is not None and len(trials):
        print(
            f"note: {space.run_dir} already holds {len(trials)} finished trial(s); "
            "--resume continues that run",
            flush=True,
        )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: sys.argv[1:]); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from study.space import SpaceError, load_space

    try:
        if args.report_only:
            if args.space or args.resume or args.dry_run:
                return _error("--report-only takes a run folder alone (no --space/--resume)")
            return _report_only(args.report_only)
        if not args.space:
            parser.print_usage(sys.stderr)
            return _error("--space is required (or --report-only RUN_DIR)")
        space = load_space(args.space, args.override, check_data=not args.dry_run)
        if args.dry_run:
            return _dry_run(space)

        from study import runner

        address = args.address or os.environ.get("RAY_ADDRESS") or None
        runner.prepare_environment(local=address is None)
        options = runner.RunOptions(
            address=address,
            resume=args.resume,
            dashboard=args.dashboard,
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
            progress_interval_s=args.progress_every,
            report=not args.no_report,
        )
        result = runner.run_study(space, options)
        return EXIT_OK if result.status == "finished" else EXIT_INTERRUPTED
    except SpaceError as exc:
        return _error(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as exc:
        from study.runner import StudyError

        if isinstance(exc, StudyError):
            return _error(str(exc))
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
