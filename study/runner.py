"""Run a study: a validated space -> its :class:`~study.plan.Plan` -> Ray Tune trials
(+ Optuna) -> the run's tables.

:func:`run_study` plans once (:func:`study.plan.make_plan`: the trial configs, checked
before Ray starts), builds each data set once in the driver, starts or joins Ray
(:mod:`study.cluster`), opens a session in the run folder (:mod:`study.session`), and
runs the Tuner :func:`study.tuner.build_tuner` assembles: one trial per config, each an
``ae4ad.fit`` (:func:`study.trainable.train_trial`). The tuner's collector rewrites the
tables (:mod:`study.results`) as trials finish and prints progress
(:mod:`study.progress`).

Resuming (``RunOptions(resume=True)``) reads the run's trials table: trials with a
finished status are not run again; a grid runs only its missing configs, an Optuna
search continues each stratum's study in optuna.db until it has ``n_trials``.

Example (a two-trial study on a small phantom; takes a minute on 2 CPU cores):
    >>> from study.space import load_space
    >>> space = load_space("smoke", ["storage_path=/tmp/ae4ad-doctest"])  # doctest: +SKIP
    >>> result = run_study(space, RunOptions(num_cpus=2))  # doctest: +SKIP
    >>> result.status, result.counts["completed"]  # doctest: +SKIP
    ('finished', 2)
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from study.cluster import (
    check_resources,
    concurrency,
    live_nodes,
    prepare_environment,
    quiet_libraries,
    start_ray,
)
from study.fusion import describe, fuse
from study.plan import Plan, StudyError, make_plan
from study.progress import Progress, best_so_far
from study.results import FINISHED_STATUSES, RunTables, has_results
from study.session import RunSession
from study.space import Space
from study.trainable import train_trial

__all__ = [
    "RunOptions",
    "RunResult",
    "StudyError",
    "check_resources",
    "prepare_environment",
    "run_study",
    "start_ray",
    "train_trial",
]


@dataclass
class RunOptions:
    """How to run a study (the command line's options).

    - ``address``: join this Ray cluster (default: ``RAY_ADDRESS``, else start an
      embedded Ray that listens on 127.0.0.1 only).
    - ``resume``: continue the run folder's study instead of refusing to touch it.
    - ``dashboard``: start Ray's dashboard (embedded Ray only; 127.0.0.1).
    - ``num_cpus`` / ``num_gpus``: what the embedded Ray may use (default: all).
    - ``progress_interval_s``: seconds between progress summary lines.
    - ``report``: write the report at the end (study.report.write_report).
    - ``alpha``: the level of the report's verdicts.
    - ``keep_models``: ``none``, ``best`` (per stratum) or ``all`` trials' final models
      kept in ``<run dir>/models/`` (default: all up to 100 planned trials, else best).
    """

    address: str | None = None
    resume: bool = False
    dashboard: bool = False
    num_cpus: int | None = None
    num_gpus: int | None = None
    progress_interval_s: float = 10.0
    report: bool = True
    out: TextIO | None = None
    keep_models: str | None = None
    alpha: float = 0.05


@dataclass
class RunResult:
    """What a run did: its folder, final status and trial counts by status."""

    run_dir: Path
    status: str
    counts: dict[str, int] = field(default_factory=dict)
    trials_run: int = 0
    trials_wall_s: float = 0.0  # time spent running trials (Ray Tune's part of the run)
    report: Path | None = None


class _Interrupted(KeyboardInterrupt):
    """SIGTERM during a run (e.g. `ray job stop`): handled like Ctrl-C. A
    KeyboardInterrupt, because Ray's waits in the driver let only that one through (any
    other exception raised by a signal handler there becomes a SystemError)."""


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM raises :class:`_Interrupted` in the main thread while the trials run."""

    def on_term(signum, frame):  # noqa: ANN001
        raise _Interrupted()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            signal.signal(signal.SIGTERM, previous)


def _open_tables(space: Space, options: RunOptions) -> RunTables:
    if has_results(space.run_dir) and not options.resume:
        raise StudyError(
            f"{space.run_dir} already holds results of study {space.name!r}; pass --resume "
            f"to continue it, or choose another name (--override name=...)"
        )
    return RunTables.load(space.run_dir) if options.resume else RunTables(space.run_dir)


def _check_trackers(space: Space) -> None:
    """A tracker whose package is missing: one line, before Ray starts."""
    if not space.logging.trackers:
        return
    from study import trackers

    try:
        trackers.check(space)
    except trackers.TrackerError as exc:
        raise StudyError(str(exc)) from None


def _print_header(plan: Plan, options: RunOptions, bundle, nodes, out: TextIO) -> None:  # noqa: ANN001
    space = plan.space
    where = options.address or os.environ.get("RAY_ADDRESS") or "embedded Ray on 127.0.0.1"
    cpus = sum(float(n.get("CPU", 0)) for n in nodes)
    gpus = sum(float(n.get("GPU", 0)) for n in nodes)
    per_trial = ", ".join(f"{k}={v:g}" for k, v in bundle.items())
    at_once = concurrency(space, bundle, nodes)
    lines = [
        plan.headline(),
        f"ray: {where} ({len(nodes)} node{'s' if len(nodes) != 1 else ''}, {cpus:g} CPUs, "
        f"{gpus:g} GPUs); per trial {per_trial}; up to {at_once} at once",
        f"results: {space.run_dir}",
    ]
    if space.logging.trackers:
        from study.trackers import describe

        lines += list(describe(space))
    for line in lines:
        print(line, file=out, flush=True)


def _record_splits(run_dir: Path, datasets: Mapping[str, Any], out: TextIO) -> None:
    """How each data set's splits were made: in meta.json (the report's run facts) and
    one console line per data set for its validation split."""
    if not datasets:
        return
    from ae4ad.data.splits import describe_splits
    from study.results import update_meta

    splits = {label: describe_splits(ds) for label, ds in datasets.items()}
    update_meta(run_dir, data_splits=splits)
    for label, made in splits.items():
        print(f"data {label}: validation {made['val']}", file=out, flush=True)


def _fit(tuner: Any, plan: Plan, bundle: Mapping[str, float], nodes: Sequence[Mapping]) -> float:
    """Run the trials; the seconds it took."""
    from study.tuner import pending_trials

    grid = plan.space.search.type == "grid"
    started = time.perf_counter()
    with (
        _sigterm_interrupts(),
        pending_trials(concurrency(plan.space, bundle, nodes) if grid else None),
    ):
        try:
            tuner.fit()
        finally:
            elapsed = time.perf_counter() - started
    return elapsed


@dataclass
class _Live:
    """What a session has set up so far (for its end, however it ends)."""

    collector: Any = None  # study.tuner.Collector
    keeper: Any = None  # study.checkpoints.ModelKeeper
    trials_wall: float = 0.0


def _run_session(
    plan: Plan,
    tables: RunTables,
    session: RunSession,
    datasets: Mapping[str, Any],
    options: RunOptions,
    live: _Live,
) -> None:
    """One session's trials."""
    from study.tuner import Collector, build_tuner

    space = plan.space
    nodes = live_nodes()
    bundle = check_resources(space, nodes)
    session.open()
    out = options.out or sys.stdout
    _print_header(plan, options, bundle, nodes, out)
    _record_splits(space.run_dir, datasets, out)
    live.keeper, resume_from, prior = _checkpoint_setup(
        space, tables, session.entry["keep_models"], options, nodes, out
    )
    if space.search.type == "grid" and plan.to_run > 0:
        at_once = concurrency(space, bundle, nodes)
        plan.units = fuse(plan.todo, space, at_once, gpu="GPU" in bundle, alone=resume_from)
        print(describe(plan.units, space), file=out, flush=True)
    metric, mode = space.scheduler.metric, space.scheduler.mode
    best = best_so_far(tables.rows(), plan.belongs, metric, mode)
    counts = plan.counts(tables.rows())
    epochs = {str(c["trial_id"]): int(c["epochs"]) for c in plan.todo if "epochs" in c}
    progress = Progress(
        space, plan.total, counts, best, out, options.progress_interval_s, epochs=epochs
    )
    if plan.to_run <= 0:
        print("nothing to run: every planned trial has finished", file=out, flush=True)
        return
    live.collector = Collector(space, tables, progress, metric, session.number, prior, live.keeper)
    storage = live.keeper.tune_storage
    tuner = build_tuner(plan, datasets, live.collector, bundle, storage, resume_from, out)
    live.trials_wall = _fit(tuner, plan, bundle, nodes)


def run_study(space: Space, options: RunOptions | None = None) -> RunResult:
    """Run (or resume) the study of ``space``; returns where the results are.

    Raises :class:`StudyError` (before Ray starts, where it can) for: a run folder that
    already holds results without ``resume``; data that cannot be loaded; trial configs
    ae4ad.fit rejects; resources the cluster cannot provide.
    """
    options = options or RunOptions()
    out = options.out or sys.stdout
    tables = _open_tables(space, options)
    plan = make_plan(space, tables.done_ids, tables.count_by("stratum"))
    keep_models = _keep_models_policy(options.keep_models, plan.total)
    if plan.to_run > 0:
        _check_trackers(space)
    datasets = _load_datasets(space) if plan.to_run > 0 else {}
    quiet_libraries()
    started_ray = start_ray(options)
    session = RunSession(space, options.address, options.resume, plan.already, keep_models)
    status, live = "interrupted", _Live()
    try:
        _run_session(plan, tables, session, datasets, options, live)
        status = "finished"
    except (KeyboardInterrupt, _Interrupted):
        print("\ninterrupted: stopping the study and saving what finished", file=out, flush=True)
    finally:
        _end_session(session, tables, live, started_ray, status, out)
    return _result(plan, tables, live, status, options, out)


def _end_session(session, tables, live, started_ray, status, out) -> None:  # noqa: ANN001
    """Whatever happened: the checkpoints cleaned up, the tables flushed, Ray stopped
    (when this run started it), the session's end in meta.json."""
    if live.keeper is not None:
        _finish_checkpoints(live.keeper, status, out)
    if session.is_open:
        with contextlib.suppress(Exception):
            tables.flush_if_due(force=True)
    if started_ray:
        import ray

        with contextlib.suppress(Exception):
            ray.shutdown()
    collector = live.collector
    started = collector.trials_started if collector is not None else None
    finished = collector.trials_finished if collector is not None else None
    session.close(status, started, finished)


def _result(plan, tables, live, status, options, out) -> RunResult:  # noqa: ANN001
    counts = plan.counts(tables.rows())
    if status == "finished" and sum(counts.values()) < plan.total:
        print(
            f"warning: {plan.total - sum(counts.values())} planned trial(s) have no result; "
            "--resume runs them",
            file=out,
            flush=True,
        )
    result = RunResult(
        run_dir=plan.space.run_dir,
        status=status,
        counts=counts,
        trials_run=live.collector.trials_finished if live.collector is not None else 0,
        trials_wall_s=live.trials_wall,
    )
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in FINISHED_STATUSES if counts.get(s))
    print(f"{status}: {summary or 'no trials'} (of {plan.total} planned)", file=out, flush=True)
    if options.report and status == "finished" and sum(counts.values()):
        result.report = _write_report(plan.space.run_dir, out, options.alpha)
    print(f"results: {plan.space.run_dir}", file=out, flush=True)
    return result


def _load_datasets(space: Space) -> dict[str, Any]:
    import ae4ad

    datasets = {}
    for spec in space.datasets:
        try:
            datasets[spec.label] = ae4ad.load_dataset(spec.name, **spec.params)
        except (ValueError, TypeError, OSError) as exc:
            where = space.path.name if space.path else space.name
            raise StudyError(f"{where}: datasets {spec.label!r}: {exc}") from None
    return datasets


def _keep_models_policy(keep_models: str | None, total: int) -> str:
    from study.checkpoints import KEEP_MODELS, default_keep_models

    if keep_models is None:
        return default_keep_models(total)
    if keep_models not in KEEP_MODELS:
        raise StudyError(
            f"--keep-models: expected one of {', '.join(KEEP_MODELS)}, got {keep_models!r}"
        )
    return keep_models


def _checkpoint_setup(
    space: Space,
    tables: RunTables,
    keep_models: str,
    options: RunOptions,
    nodes: Sequence[Mapping[str, Any]],
    out: TextIO,
):
    """The run's ModelKeeper, the checkpoints unfinished trials continue from
    (``--resume``) and the records those checkpoints hold."""
    from study.checkpoints import (
        ModelKeeper,
        find_resume_checkpoints,
        is_uri,
        read_records,
        tune_storage_path,
    )

    storage = tune_storage_path(space)
    earlier = find_resume_checkpoints(storage, exclude=tables.done_ids) if options.resume else {}
    prior: dict[str, list[dict]] = {}
    for tid, folders in earlier.items():
        with contextlib.suppress(Exception):
            prior[tid] = read_records(folders[0])
    keeper = ModelKeeper(tables, keep_models, space.scheduler.metric, space.scheduler.mode,
                         storage, earlier)  # fmt: skip
    print(f"models: --keep-models {keep_models}; checkpoints in {storage}", file=out, flush=True)
    if prior:
        epochs = ", ".join(str(r[-1].get("epoch")) for r in list(prior.values())[:8])
        print(
            f"resume: {len(prior)} unfinished trial(s) continue from their last checkpoint "
            f"(epoch {epochs}{', ...' if len(prior) > 8 else ''})",
            file=out,
            flush=True,
        )
    if len(nodes) > 1 and not is_uri(storage):
        print(
            f"note: storage_path {space.storage_path} is a local path: trials on other nodes "
            "keep checkpoints only if it is a shared file system (else use a URI, see "
            "docs/running.md)",
            file=out,
            flush=True,
        )
    return keeper, {tid: list(f) for tid, f in earlier.items()}, prior


def _finish_checkpoints(keeper: Any, status: str, out: TextIO) -> None:
    """End of a session: prune the kept models, drop the checkpoints of a finished
    study, say (one line each) which finished trials the policy keeps have no readable
    model file and why, print what the run folder holds."""
    from study.results import disk_used_text

    try:
        keeper.finalize(finished=status == "finished")
        for tid, why in keeper.missing_models():
            print(
                f"warning: trial {tid} has no readable kept model although --keep-models "
                f"{keeper.policy} keeps it: {why}",
                file=out,
                flush=True,
            )
        print(f"disk: {disk_used_text(keeper.tables.run_dir)}", file=out, flush=True)
    except Exception as exc:  # noqa: BLE001 - the tables are safe; say what failed
        print(f"warning: cleaning up checkpoints failed ({type(exc).__name__}: {exc})", file=out)


def _write_report(run_dir: Path, out: TextIO, alpha: float = 0.05) -> Path | None:
    """study.report.write_report(run_dir) when it is available, then the verdict lines; a
    failing report only warns (the tables are already written)."""
    try:
        from study.report import verdict_lines, write_report
    except ImportError as exc:
        print(f"warning: no report written (study.report unavailable: {exc})", file=out)
        return None
    try:
        path = write_report(run_dir, alpha=alpha)
    except Exception as exc:  # the results are safe; the report can be rebuilt later
        print(
            f"warning: the report failed ({type(exc).__name__}: {exc}); the tables are "
            f"complete; rebuild it with: python run_study.py --report-only {run_dir}",
            file=out,
            flush=True,
        )
        return None
    for line in verdict_lines(run_dir):
        print(line, file=out, flush=True)
    print(f"report: {path}", file=out, flush=True)
    return Path(path)
