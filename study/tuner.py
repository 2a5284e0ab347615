"""The driver's side of a study's trials: the Ray Tune ``Tuner`` (trainable,
searcher, scheduler, storage, callbacks) and the bookkeeping of what the trials report.

:func:`build_tuner` assembles the Tuner of one session from the :class:`~study.plan.Plan`;
:class:`Collector` (fed by a Tune callback) keeps every trial's records, writes a row to
the run's tables and a progress line when a trial ends, and hands the final checkpoint
to the :class:`~study.checkpoints.ModelKeeper`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from study.fusion import resources_for
from study.results import HISTORY_FILE, OPTUNA_FILE, RunTables, TrialTiming, utc_now
from study.space import trial_id
from study.trainable import objective_stand_in, train_trial

if TYPE_CHECKING:
    from study.plan import Plan
    from study.progress import Progress
    from study.schema import Space

__all__ = ["Collector", "build_tuner", "make_scheduler", "pending_trials", "record_from_result"]

# Keys Ray Tune adds to every result; they are not part of a record.
_TUNE_KEYS = {
    "done",
    "training_iteration",
    "trial_id",
    "experiment_id",
    "experiment_tag",
    "date",
    "timestamp",
    "time_this_iter_s",
    "time_total_s",
    "time_since_restore",
    "iterations_since_restore",
    "timesteps_since_restore",
    "timesteps_total",
    "episodes_total",
    "pid",
    "hostname",
    "node_ip",
    "node_id",
    "config",
    "checkpoint_dir_name",
    "should_checkpoint",
    "__duplicate__",
    "__trial_info__",
    "__stdout_file__",
    "__stderr_file__",
}
# Final-record lists that only the tables need.
_BULKY_KEYS = ("scores", "labels", "examples")


def _trial_name(trial: Any) -> str:
    return str(trial.config.get("trial_id", trial.trial_id))


def record_from_result(result: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """A reported result without the keys Ray Tune adds; the objective's stand-in
    value (see :func:`study.trainable.train_trial`) turned back into NaN."""
    from study.searcher import REPLACED_KEY

    record = {k: v for k, v in result.items() if k not in _TUNE_KEYS}
    return record, bool(record.pop(REPLACED_KEY, False))


def _error_message(trial: Any) -> str:
    """The exception a trial raised, as ``Type: message`` (one line)."""
    import ray.cloudpickle as cloudpickle

    exc = None
    for read in (
        lambda: cloudpickle.loads(Path(trial.pickled_error_file).read_bytes()),  # local copy
        trial.get_pickled_error,  # the copy in the run's storage
    ):
        with contextlib.suppress(Exception):
            exc = read()
        if exc is not None:
            break
    seen = 0
    while exc is not None and seen < 5 and getattr(exc, "cause", None) is not None:
        exc, seen = exc.cause, seen + 1
    if isinstance(exc, BaseException) and not type(exc).__name__.startswith("RayTaskError"):
        text = [line for line in str(exc).strip().splitlines() if line.strip()]
        message = text[-1].strip() if text else ""
        return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    trace = None
    for read in (lambda: Path(trial.error_file).read_text(), trial.get_error):
        with contextlib.suppress(Exception):
            trace = read()
        if trace:
            break
    if trace:
        lines = [line.strip() for line in str(trace).strip().splitlines() if line.strip()]
        for line in reversed(lines):
            if not line.startswith(("File ", "^", "~", "Failure #")):
                return line
    return "the trial failed (no error message was recorded)"


class Collector:
    """The driver's bookkeeping of running trials: records as they are reported, a row
    in the tables and a progress line when a trial ends."""

    def __init__(
        self,
        space: Space,
        tables: RunTables,
        progress: Progress,
        metric: str,
        session: int,
        prior: Mapping[str, list[dict]] | None = None,
        keeper: Any = None,
    ) -> None:
        self.space = space
        self.tables = tables
        self.progress = progress
        self.metric = metric
        self.session = session
        self.records: dict[str, list[dict]] = {}
        self.started: dict[str, tuple[float, str]] = {}
        self.trials_started = 0
        self.trials_finished = 0
        # records an earlier session's checkpoint holds, by trial id (for --resume)
        self.prior: Mapping[str, list[dict]] = prior or {}
        self.keeper: Any = keeper  # a study.checkpoints.ModelKeeper
        self.reported: set[str] = set()

    def start(self, trial: Any) -> None:
        if trial.trial_id in self.records:
            return  # Tune restarted it after a failure: it keeps its records
        self.records[trial.trial_id] = {
            tid: [dict(r) for r in self.prior.get(tid, [])] for tid, _ in _members(trial)
        }
        self.started[trial.trial_id] = (time.monotonic(), utc_now())
        self.trials_started += len(self.records[trial.trial_id])

    def retry(self, trial: Any) -> None:
        pass  # it continues from its last checkpoint: result() drops what it reports again

    def result(self, trial: Any, result: dict[str, Any]) -> None:
        record, replaced = record_from_result(result)
        if replaced:
            record[self.metric] = float("nan")
        record["_where"] = (result.get("hostname"), result.get("node_ip"), result.get("node_id"))
        member = record.pop("member", None) or _members(trial)[0][0]
        records = self.records.setdefault(trial.trial_id, {}).setdefault(member, [])
        epoch = record.get("epoch")
        if isinstance(epoch, int) and records:  # a restart: drop records it repeats
            records[:] = [r for r in records if int(r.get("epoch") or 0) < epoch]
        records.append(record)
        self.reported.add(trial.trial_id)
        if isinstance(epoch, int):
            self.progress.advanced(member, epoch, int(record.get("resumed_from_epoch") or 0))
        # Tune keeps each trial's last result in its experiment state, rewritten now and
        # then: the per-image lists live in the record only (Tune lets callbacks edit it)
        for key in _BULKY_KEYS:
            result.pop(key, None)

    def step(self, trials: Sequence[Any]) -> None:
        self.progress.tick([len(_members(t)) for t in trials if t.status == "RUNNING"])
        self.tables.flush_if_due()

    def finish(self, trial: Any, error: str | None) -> None:
        by_member = self.records.pop(trial.trial_id, {})
        start = self.started.pop(trial.trial_id, None)
        if trial.trial_id not in self.reported and error is None:
            return  # stopped before it ran (end of the study): not a result
        checkpoint = getattr(trial, "checkpoint", None)
        bundle = len(_members(trial)) > 1 or "members" in trial.config
        for tid, config in _members(trial):
            records = by_member.get(tid, [])
            ended = bool(records) and bool(records[-1].get("is_final"))
            own_error = None if (ended and bundle) else error
            where = records[-1].get("_where", (None,) * 3) if records else (None,) * 3
            for record in records:
                record.pop("_where", None)
            timing = TrialTiming(
                started_at=start[1] if start else None,
                finished_at=utc_now(),
                wall_s=(time.monotonic() - start[0]) if start else None,
                hostname=where[0],
                node_ip=where[1],
                node_id=where[2],
                session=self.session,
            )
            self.tables.add_trial(
                config, records, trial_id=tid, study=self.space.name, error=own_error,
                errored=own_error is not None, timing=timing,
            )  # fmt: skip
            if self.keeper is not None:
                part = _member_checkpoint(checkpoint, tid) if bundle else checkpoint
                self.keeper.finished(tid, part)
            self.trials_finished += 1
            row = next(r for r in reversed(self.tables.rows()) if r["trial_id"] == tid)
            self.progress.finished(row)
        if bundle and self.keeper is not None and checkpoint is not None:
            self.keeper.drop_checkpoints(checkpoint)
        _drop_bulky_checkpoint_metrics(trial)
        self.tables.flush_if_due()


def _members(trial: Any) -> list[tuple[str, dict[str, Any]]]:
    """(trial id, config) of each trial a Tune trial runs: one, or a bundle's members."""
    from study.fusion import MEMBERS_KEY

    configs = trial.config.get(MEMBERS_KEY) or [trial.config]
    return [(str(c.get("trial_id") or trial_id(c)), dict(c)) for c in configs]


def _member_checkpoint(checkpoint: Any, member: str) -> Any:
    """The part of a bundle's checkpoint that is ``member``'s own trial checkpoint."""
    if checkpoint is None:
        return None
    from types import SimpleNamespace

    path = str(checkpoint.path).rstrip("/") + "/" + member
    return SimpleNamespace(filesystem=checkpoint.filesystem, path=path)


def _drop_bulky_checkpoint_metrics(trial: Any) -> None:
    """Tune keeps the metrics of a trial's checkpoints (the final one's per-image lists
    included) in its experiment state, which it rewrites now and then: drop the lists
    once the trial has finished (the tables have them)."""
    with contextlib.suppress(Exception):
        manager = trial.run_metadata.checkpoint_manager
        for result in [*manager.best_checkpoint_results, manager.latest_checkpoint_result]:
            for key in _BULKY_KEYS:
                if result is not None:
                    result.metrics.pop(key, None)
        trial.run_metadata.invalidate_cache()  # Tune caches the JSON it writes


def _tune_callback(collector: Collector):
    """A Ray Tune callback that hands every event to ``collector``."""
    from ray.tune import Callback

    class StudyCallback(Callback):
        def __init__(self, collector: Collector | None) -> None:
            self.collector = collector

        # Tune pickles its configuration (callbacks included) for its own restore,
        # which a study does not use: the live bookkeeping stays in this process.
        def __getstate__(self) -> dict:
            return {"collector": None}

        def on_trial_start(self, iteration, trials, trial, **info):  # noqa: ANN001
            self.collector.start(trial)

        def on_trial_recover(self, iteration, trials, trial, **info):  # noqa: ANN001
            self.collector.retry(trial)

        def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
            self.collector.result(trial, result)

        def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
            self.collector.finish(trial, error=None)

        def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
            self.collector.finish(trial, error=_error_message(trial))

        def on_step_end(self, iteration, trials, **info):  # noqa: ANN001
            self.collector.step(trials)

        def on_experiment_end(self, trials, **info):  # noqa: ANN001
            self.collector.tables.flush_if_due(force=True)

    return StudyCallback(collector)


def _tracker_callbacks(space: Space) -> list[Any]:
    """Ray Tune's logger callbacks of the trackers in the space's ``logging`` (MLflow,
    TensorBoard, W&B; see :mod:`study.trackers`), fed with the records the tables keep."""
    if not space.logging.trackers:
        return []
    from study.trackers import callbacks

    return callbacks(space, record_from_result)


def make_scheduler(space: Space, tables: RunTables | None = None, out: TextIO | None = None):
    """The study's trial scheduler: None, or ASHA with one state per stratum (see
    :mod:`study.scheduler`). On resume (``tables`` holding finished trials) the rungs
    are rebuilt from the run's history, so new trials are compared with the old ones."""
    if space.scheduler.type != "asha":
        return None
    from study.scheduler import asha_per_stratum, restore_rungs

    scheduler = asha_per_stratum(space)
    rows = tables.rows() if tables is not None else []
    path = tables.run_dir / HISTORY_FILE if tables is not None else None
    if rows and path is not None and path.is_file():
        import pandas as pd

        metric, mode = space.scheduler.metric, space.scheduler.mode
        history = pd.read_parquet(path)
        history = history[[c for c in ("trial_id", "epoch", metric) if c in history.columns]]
        replayed = restore_rungs(
            scheduler,
            rows,
            history.to_dict("records"),
            metric=metric,
            stand_in=objective_stand_in(metric, mode),
        )
        if replayed and out is not None:
            per = ", ".join(f"{k} {n}" for k, n in replayed.items())
            print(
                f"asha: rungs restored from the history of {sum(replayed.values())} finished "
                f"trial(s) ({per})",
                file=out,
                flush=True,
            )
    return scheduler


@contextlib.contextmanager
def pending_trials(n: int | None):
    """Let Tune prepare ``n`` trials ahead (its default for a custom searcher is 1, which
    starts the first workers one after the other). Not for Optuna: a trial waiting for a
    free slot was asked for before the results that finish meanwhile."""
    key = "TUNE_MAX_PENDING_TRIALS_PG"
    if n is None or key in os.environ:
        yield
        return
    os.environ[key] = str(max(1, n))
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _searcher(space: Space, plan: Plan, tables: RunTables, out: TextIO):
    """The plan's trials for a grid; for an Optuna search, one Optuna study per stratum in
    the run's optuna.db, told what the trials table already holds."""
    if space.search.type == "grid":
        from study.searcher import PlanSearcher

        return PlanSearcher(plan.units if plan.units is not None else plan.todo)
    from study.searcher import StratifiedOptunaSearcher

    metric, mode = space.scheduler.metric, space.scheduler.mode
    finished = {
        str(r["trial_id"]): (str(r["status"]), r.get(metric), r.get("epochs_done"))
        for r in tables.rows()
    }
    searcher = StratifiedOptunaSearcher(
        space,
        f"sqlite:///{tables.run_dir / OPTUNA_FILE}",
        done_counts=tables.count_by("stratum"),
        finished=finished,
        metric=metric,
        mode=mode,
    )
    if searcher.recovered["failed"] or searcher.recovered["told"]:
        print(
            f"optuna: {searcher.recovered['failed']} trial(s) an interrupted run left running "
            f"marked FAIL, {searcher.recovered['told']} recorded from the trials table",
            file=out,
            flush=True,
        )
    return searcher


def build_tuner(
    plan: Plan,
    datasets: Mapping[str, Any],
    collector: Collector,
    bundle: Mapping[str, float],
    storage: str,
    resume_from: Mapping[str, Sequence[str]],
    out: TextIO,
) -> Any:
    """The ``ray.tune.Tuner`` of one session of ``plan``'s study: the data sets put once in
    Ray's object store, one trial per config with ``bundle`` as its resources, the
    checkpoints (last and best) in ``storage``, ``collector`` fed by a Tune callback."""
    import ray
    from ray import tune

    space, tables = plan.space, collector.tables
    metric, mode = space.scheduler.metric, space.scheduler.mode
    refs = {label: ray.put(ds) for label, ds in datasets.items()}
    trainable = tune.with_parameters(
        train_trial, datasets=refs, objective=(metric, mode), resume_from=resume_from
    )
    trainable = tune.with_resources(
        trainable, lambda config: tune.PlacementGroupFactory([resources_for(config, bundle)])
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=_searcher(space, plan, tables, out),
            scheduler=make_scheduler(space, tables, out),
            num_samples=-1,
            max_concurrent_trials=space.resources.max_concurrent_trials,
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=f"session-{collector.session}",
            storage_path=storage,
            checkpoint_config=tune.CheckpointConfig(  # the last and the best
                num_to_keep=1, checkpoint_score_attribute=metric, checkpoint_score_order=mode
            ),
            verbose=0,
            callbacks=[_tune_callback(collector), *_tracker_callbacks(space)],
            failure_config=tune.FailureConfig(max_failures=space.max_failures, fail_fast=False),
        ),
    )
