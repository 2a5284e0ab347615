"""Command line of the study harness (``python run_study.py`` or ``ae4ad-study``).

    python run_study.py --space latent.yaml              # run (bare names: shipped spaces)
    python run_study.py --space latent.yaml --dry-run    # validate and print the plan
    python run_study.py --space latent.yaml --resume     # continue an interrupted run
    python run_study.py --space latent.yaml --override training.epochs=5 --override seeds=[0]
    python run_study.py --space paper.yaml --address 10.0.0.5:6379   # join a Ray cluster
    python run_study.py --report-only runs/latent        # rebuild the report from tables
    python run_study.py --space smoke.yaml --log mlflow --log tensorboard   # and trackers
    python run_study.py predict --run runs/latent --trial best scans/ --out scored/
    python run_study.py export-images --run runs/latent --out phantom-test/  # test split
    python run_study.py compare runs/latent runs/entropy --out compare.html  # side by side

A user's mistake (a bad space, results already there, resources the cluster lacks,
data that cannot be loaded) prints ``error: <message>`` on stderr and exits with 2,
before Ray starts where it can. An interrupted run (Ctrl-C, SIGTERM) exits with 130
after saving what finished. ``predict``, ``export-images`` and ``compare`` print a bad input (an
unreadable image, a wrong channel count, an unknown trial, a folder that is not a run)
as one ``error:`` line and exit with 2. See docs/running.md.

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

__all__ = [
    "build_compare_parser",
    "build_export_parser",
    "build_parser",
    "build_predict_parser",
    "main",
]

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the command line."""
    from study.schema import TRACKERS

    parser = argparse.ArgumentParser(
        prog="run_study.py",
        description=(
            "Run a study of reconstruction-based anomaly detection: a YAML search space -> "
            "Ray Tune trials (+ Optuna) -> results tables and a report in "
            "<storage_path>/<study name>/."
        ),
        epilog=(
            "Also: 'predict --run RUN_DIR --trial best IMAGES --out DIR' scores new images with "
            "a kept model; 'export-images --run RUN_DIR --out DIR' writes a run's test "
            "images; 'compare RUN_DIR RUN_DIR... --out compare.html' puts runs side by side. "
            "Details: docs/running.md"
        ),
    )
    _add_run_arguments(parser)
    _add_ray_arguments(parser)
    _add_output_arguments(parser, TRACKERS)
    return parser


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """What to run: the space, its overrides, resume, a dry run or a report only."""
    parser.add_argument(
        "--space",
        metavar="YAML",
        help="the search space: a path, or a bare name looked up in ./, ./search_spaces/ "
        "and the shipped spaces (e.g. latent.yaml or latent)",
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


def _add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """Where trials run: a Ray cluster, or the embedded Ray and its resources."""
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


def _add_output_arguments(parser: argparse.ArgumentParser, trackers: tuple[str, ...]) -> None:
    """What a run prints and writes: progress, the report, trackers, kept models."""
    parser.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between progress summary lines (default 10); a line is also "
        "printed for every finished trial",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.05,
        metavar="LEVEL",
        help="level of the report's verdicts, in (0, 1) (default 0.05)",
    )
    parser.add_argument(
        "--no-report",
        action="store_true",
        help="write the tables only, not the report",
    )
    parser.add_argument(
        "--log",
        action="append",
        default=[],
        choices=trackers,
        metavar="TRACKER",
        help="also log every trial to this tracker: mlflow, tensorboard or wandb (its extra "
        "installed, e.g. pip install -e '.[mlflow]'); repeatable; added to the space's "
        "logging.trackers",
    )
    parser.add_argument(
        "--keep-models",
        choices=("none", "best", "all"),
        default=None,
        help="final models kept in <run>/models/: all trials', the best per stratum, or "
        "none (default: all for up to 100 trials, else best)",
    )


def build_predict_parser() -> argparse.ArgumentParser:
    """The parser of ``predict``: score new images with a run's kept models."""
    parser = argparse.ArgumentParser(
        prog="run_study.py predict",
        description=(
            "Score images with the model(s) a study kept: per-image scores (scores.csv), "
            "anomaly-map overlays (maps/<trial_id>/*.png) and, with --labels, AUC and AP."
        ),
        epilog="Details: docs/running.md",
    )
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="the run folder")
    parser.add_argument(
        "--trial",
        default="best",
        metavar="TRIAL",
        help="best (default), best-per-stratum, or a trial id of the run",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGES_OR_FOLDER",
        help="image files (.png, .jpg, .bmp, .tif) or .npy arrays, or folders of them",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="where results go")
    parser.add_argument(
        "--labels",
        metavar="CSV",
        default=None,
        help="a CSV with columns file,label (0 normal, 1 abnormal), or 'from-folders' "
        "(normal/ and abnormal/ parent folders): prints AUC and AP",
    )
    parser.add_argument("--no-maps", action="store_true", help="write scores only")
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), cuda, cuda:<index> or auto (a GPU when there is one)",
    )
    return parser


def build_export_parser() -> argparse.ArgumentParser:
    """The parser of ``export-images``: write a run's data set split as files."""
    parser = argparse.ArgumentParser(
        prog="run_study.py export-images",
        description=(
            "Write one split of a run's data set (rebuilt from its space.yaml) as files with "
            "labels.csv, e.g. the phantom's test images for predict."
        ),
    )
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="the run folder")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the files go")
    parser.add_argument("--split", default="test", choices=("test", "val", "train"))
    parser.add_argument(
        "--format",
        default="npy",
        choices=("npy", "png"),
        help="npy: float arrays, lossless (default); png: 8-bit images",
    )
    parser.add_argument("--dataset", default=None, metavar="LABEL", help="data set label")
    return parser


def build_compare_parser() -> argparse.ArgumentParser:
    """The parser of ``compare``: two or more runs side by side on one page."""
    parser = argparse.ArgumentParser(
        prog="run_study.py compare",
        description=(
            "Put two or more run folders side by side on one self-contained HTML page: AUC "
            "against latent_dim per stratum (one curve per run), the verdicts, the "
            "fixed-latent_dim tests and what differs between the runs."
        ),
        epilog="Details: docs/report.md, 'Comparing runs'",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (two or more)")
    parser.add_argument(
        "--out", default="compare.html", metavar="HTML", help="the page (default compare.html)"
    )
    parser.add_argument(
        "--alpha", type=float, default=0.05, metavar="LEVEL", help="level of the verdicts"
    )
    return parser


def _compare(argv: list[str]) -> int:
    args = build_compare_parser().parse_args(argv)
    if not 0 < args.alpha < 1:
        return _error(f"--alpha: expected a number in (0, 1), got {args.alpha:g}")
    from study.report.compare import CompareError, compare

    try:
        comparison = compare(args.runs, out=args.out, alpha=args.alpha)
    except CompareError as exc:
        return _error(str(exc))
    for label, run in zip(comparison.labels, comparison.runs):
        print(f"{label}: {run.run_dir}", flush=True)
    print(f"comparison: {args.out}", flush=True)
    return EXIT_OK


def _predict(argv: list[str]) -> int:
    from study.predict import PredictError, predict

    args = build_predict_parser().parse_args(argv)
    try:
        result = predict(
            args.run, args.trial, args.inputs, args.out, labels=args.labels,
            maps=not args.no_maps, device=args.device,
        )  # fmt: skip
    except PredictError as exc:
        return _error(str(exc))
    for info in result.trials:
        line = (
            f"trial {info['trial_id']} (epoch {info['epoch']}, {info['score']} score): "
            f"{info['n_images']} images scored"
        )
        if "n_normal" in info:
            auc, ap = info.get("auc"), info.get("ap")
            metrics = (
                f"auc={auc:.6f} ap={ap:.6f}"
                if auc is not None
                else "auc/ap undefined (labels of one class only)"
            )
            line += f"; {metrics} ({info['n_normal']} normal, {info['n_abnormal']} abnormal)"
        print(line, flush=True)
    print(f"scores: {result.out_dir / 'scores.csv'}", flush=True)
    if any("maps" in info for info in result.trials):
        print(f"maps: {result.out_dir / 'maps'}", flush=True)
    return EXIT_OK


def _export(argv: list[str]) -> int:
    from study.predict import PredictError, export_split

    args = build_export_parser().parse_args(argv)
    try:
        files = export_split(args.run, args.out, args.split, args.format, args.dataset)
    except PredictError as exc:
        return _error(str(exc))
    print(f"{len(files)} {args.split} images written to {args.out} (labels.csv)", flush=True)
    return EXIT_OK


def _error(message: str) -> int:
    text = " ".join(str(message).split())  # one line
    print(f"error: {text}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def _report_only(run_dir: str, alpha: float) -> int:
    path = Path(run_dir)
    if not (path / "trials.parquet").is_file():
        return _error(f"{run_dir}: not a run folder (no trials.parquet in it)")
    from study.report import verdict_lines, write_report

    report = write_report(path, alpha=alpha)
    for line in verdict_lines(path):
        print(line, flush=True)
    print(f"report: {report}", flush=True)
    return EXIT_OK


def _dry_run(space) -> int:  # noqa: ANN001
    from study.fusion import preview
    from study.results import read_trials
    from study.space import estimate_plan, format_plan

    plan = estimate_plan(space)
    print(format_plan(plan), flush=True)
    print(preview(space), flush=True)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "predict":
        return _predict(argv[1:])
    if argv and argv[0] == "export-images":
        return _export(argv[1:])
    if argv and argv[0] == "compare":
        return _compare(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    from study.space import SpaceError, load_space

    if not 0 < args.alpha < 1:
        return _error(f"--alpha: expected a number in (0, 1), got {args.alpha:g}")
    try:
        if args.report_only:
            if args.space or args.resume or args.dry_run:
                return _error("--report-only takes a run folder alone (no --space/--resume)")
            return _report_only(args.report_only, args.alpha)
        if not args.space:
            parser.print_usage(sys.stderr)
            return _error("--space is required (or --report-only RUN_DIR)")
        space = load_space(args.space, args.override, check_data=not args.dry_run)
        if args.log:
            from study.trackers import with_trackers

            space = with_trackers(space, args.log)
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
            keep_models=args.keep_models,
            alpha=args.alpha,
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
