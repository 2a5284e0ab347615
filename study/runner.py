"""Run a study: a validated space -> Ray Tune trials (+ Optuna) -> the run's tables.

:func:`run_study` builds each data set once in the driver, puts it in Ray's object
store, and runs one Ray Tune trial per trial config. The trainable
(:func:`train_trial`) is a thin adapter around ``ae4ad.fit``: it forwards each record
to Tune. A Tune callback in the driver collects the records and rewrites the tables
(see :mod:`study.results`) as trials finish; progress is printed as one line per
finished trial and a summary line every ``progress_interval_s`` seconds.

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
import json
import logging
import math
import os
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from study.results import (
    FINISHED_STATUSES,
    HISTORY_FILE,
    OPTUNA_FILE,
    SPACE_FILE,
    RunTables,
    TrialTiming,
    atomic_write_text,
    has_results,
    read_meta,
    update_meta,
    utc_now,
)
from study.space import (
    Space,
    fit_config,
    grid_trials,
    strata,
    trial_id,
)

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

# Environment every Ray process of a study gets (set before Ray starts).
RAY_ENV = {
    "RAY_CHDIR_TO_TRIAL_DIR": "0",  # trials keep the driver's working directory
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # the run's own tables are the results
    "TUNE_DISABLE_SIGINT_HANDLER": "1",  # Ctrl-C stops the study at once
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0: no experiment banner or status tables
}
# Only for the embedded (local) Ray: advertise and bind 127.0.0.1, never an external
# address. Read by Ray when it is imported, so set before `import ray`.
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

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
# Metrics bounded in [0, 1]: a missing value is replaced by the worst bound.
_UNIT_METRICS = {"auc", "ap", "pixel_ap", "pixel_auc", "best_dice"}


class StudyError(Exception):
    """A study cannot run as asked (results already there, resources the cluster does
    not have, data that cannot be loaded): a one-line message for the user."""


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


# --------------------------------------------------------------------------- environment


def prepare_environment(local: bool = True) -> None:
    """Set the environment Ray reads when it starts; call before the first ``import
    ray`` for ``local`` so that the embedded Ray binds 127.0.0.1 only.

    The embedded Ray also gets token authentication with a fresh random token in the
    environment (unless ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH`` are
    set), so Ray does not write a token file into the home folder."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if local:
        os.environ.update(LOCAL_ENV)
        auth_keys = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
        if not any(k in os.environ for k in auth_keys):
            os.environ["RAY_AUTH_MODE"] = "token"
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        if "ray" in sys.modules:  # imported earlier: make its node address loopback too
            import ray._private.ray_constants as ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False


def _quiet_libraries() -> None:
    for name in ("ray", "ray.train", "ray.data", "ray.air", "filelock"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Tune logs every trial's traceback; the study prints one line per errored trial
    # (the traceback stays in <run dir>/tune/session-<n>/<trial id>/error.txt)
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", module=r"ray\..*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"optuna\..*")


def start_ray(options: RunOptions) -> bool:
    """Connect to a cluster or start the embedded Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = options.address or os.environ.get("RAY_ADDRESS")
    prepare_environment(local=not address)
    common: dict[str, Any] = {
        "logging_level": logging.ERROR,
        "log_to_driver": False,
        "configure_logging": True,
    }
    if address:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise StudyError(f"cannot join the Ray cluster at {address}: {exc}") from None
        return True
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        include_dashboard=options.dashboard,
        dashboard_host="127.0.0.1",
        num_cpus=options.num_cpus,
        num_gpus=options.num_gpus,
        **common,
    )
    return True


# --------------------------------------------------------------------------- resources


def check_resources(space: Space, nodes: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The resource bundle of one trial, checked against the cluster's nodes.

    ``nodes``: the resources of each live node (``ray.nodes()[i]["Resources"]``).
    Raises :class:`StudyError` when no node can hold one trial (Ray would leave such
    trials pending forever, silently).

    >>> from study.space import load_space
    >>> check_resources(load_space("smoke"), [{"CPU": 2.0}])
    {'CPU': 1.0}
    >>> try:
    ...     check_resources(load_space("smoke", ["resources.gpus_per_trial=1"]), [{"CPU": 2.0}])
    ... except StudyError as exc:
    ...     print(str(exc)[:60])
    resources.gpus_per_trial: 1 GPU per trial, but the cluster h
    """
    res = space.resources
    cluster_gpus = sum(float(n.get("GPU", 0)) for n in nodes)
    gpus = res.resolve_gpus(cluster_gpus)
    bundle: dict[str, float] = {"CPU": float(res.cpus_per_trial)}
    if gpus > 0:
        bundle["GPU"] = float(gpus)
    for key, value in (res.custom or {}).items():
        bundle[str(key)] = float(value)

    def fmt(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"

    if not nodes:
        raise StudyError("the Ray cluster has no live node")
    most_cpus = max(float(n.get("CPU", 0)) for n in nodes)
    if bundle["CPU"] > most_cpus:
        raise StudyError(
            f"resources.cpus_per_trial: {fmt(bundle['CPU'])} CPUs per trial, but the largest "
            f"node has {fmt(most_cpus)}"
        )
    if gpus > 0:
        if cluster_gpus <= 0:
            raise StudyError(
                f"resources.gpus_per_trial: {fmt(gpus)} GPU per trial, but the cluster has "
                "no GPU (set gpus_per_trial: 0 or auto)"
            )
        most_gpus = max(float(n.get("GPU", 0)) for n in nodes)
        if gpus > most_gpus:
            raise StudyError(
                f"resources.gpus_per_trial: {fmt(gpus)} GPUs per trial, but the largest node "
                f"has {fmt(most_gpus)}"
            )
    for key in res.custom or {}:
        have = [float(n.get(key, 0)) for n in nodes]
        if max(have) <= 0:
            known = sorted(
                {k for n in nodes for k in n if not k.startswith("node:")}
                - {"CPU", "GPU", "memory", "object_store_memory"}
            )
            raise StudyError(
                f"resources.custom.{key}: no node of the cluster has this resource "
                f"(custom resources there: {', '.join(known) or 'none'})"
            )
        if bundle[key] > max(have):
            raise StudyError(
                f"resources.custom.{key}: {fmt(bundle[key])} per trial, but the most a node "
                f"has is {fmt(max(have))}"
            )
    if not any(all(float(n.get(k, 0)) >= v for k, v in bundle.items()) for n in nodes):
        raise StudyError(
            "resources: no single node has everything one trial asks for "
            + ", ".join(f"{k}={fmt(v)}" for k, v in bundle.items())
        )
    return bundle


def _concurrency(space: Space, bundle: Mapping[str, float], nodes: Sequence[Mapping]) -> int:
    """How many trials can run at once on these nodes."""
    total = 0
    for node in nodes:
        fits = [math.floor(float(node.get(k, 0)) / v + 1e-9) for k, v in bundle.items() if v > 0]
        total += min(fits) if fits else 0
    limit = space.resources.max_concurrent_trials
    return max(1, min(total, limit) if limit else total)


# --------------------------------------------------------------------------- trainable


def _objective_stand_in(metric: str, mode: str) -> float:
    """A finite, worst-possible value reported in place of a NaN/missing objective."""
    if metric in _UNIT_METRICS:
        return 0.0 if mode == "max" else 1.0
    return -1e30 if mode == "max" else 1e30


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _start_state(sources: Sequence[Any]) -> tuple[dict | None, list[dict], str | None]:
    """The training state and records of the first readable checkpoint of
    ``sources`` (``ray.tune.Checkpoint``s, newest first), and why the ones before it
    did not read; (None, [], why) when none reads."""
    from ae4ad.trained import load_checkpoint
    from study.checkpoints import RECORDS_FILE

    errors = []
    for source in sources:
        try:
            with source.as_directory() as folder:
                state = load_checkpoint(folder)
                records = json.loads((Path(folder) / RECORDS_FILE).read_text("utf-8"))
            records = [r for r in records if int(r["epoch"]) <= int(state["epoch"])]
            return state, records, "; ".join(errors) or None
        except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint: try the next one
            errors.append(f"{source.path}: {type(exc).__name__}: {exc}"[:300])
    return None, [], "; ".join(errors) or None


def train_trial(
    config: dict,
    datasets: Mapping[str, Any],
    objective: tuple[str, str] = ("auc", "max"),
    resume_from: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """The Ray Tune trainable: train one trial with ``ae4ad.fit`` and report each record
    with a checkpoint.

    ``datasets`` maps data set labels to object references of the data sets the driver
    built (from ``tune.with_parameters``); ``objective`` is (metric, mode) of the
    scheduler. Records are reported as they are, except: lists and mappings only on the
    final record (scores, labels, examples); a NaN or missing objective is replaced by
    a finite worst value with ``metric_replaced: True`` (schedulers and Optuna cannot
    take NaN); ``node_id`` says where the trial ran; ``resumed_from_epoch`` the epoch
    of the checkpoint it continued from (0: trained from scratch; ``resume_error`` says
    why a checkpoint it was given could not be read).

    Every record comes with a ``ray.tune.Checkpoint`` (:mod:`study.checkpoints`): the
    model, the training state and the records so far. The trial continues from
    ``tune.get_checkpoint()`` when Tune restarts it, else from the newest readable of
    ``resume_from[trial_id]`` (checkpoints an earlier session left, for ``--resume``).
    When the storage cannot take checkpoints (a local ``storage_path`` that a worker
    node does not share) the trial goes on without them.
    """
    import ray
    from ray import tune

    import ae4ad
    from ae4ad.trained import save_checkpoint
    from study.checkpoints import RECORDS_FILE
    from study.searcher import REPLACED_KEY

    metric, mode = objective
    data = datasets[config["dataset_label"]]
    if isinstance(data, ray.ObjectRef):
        data = ray.get(data)
    node_id = ray.get_runtime_context().get_node_id()
    tid = str(config.get("trial_id") or "")
    sources = [tune.get_checkpoint()]
    sources += [tune.Checkpoint(p) for p in (resume_from or {}).get(tid, [])]
    start_state, history, resume_error = _start_state([s for s in sources if s is not None])
    start_epoch = int(start_state["epoch"]) if start_state is not None else 0
    states: list[dict] = []
    checkpoints = True
    fit = ae4ad.fit(
        fit_config(config),
        dataset=data,
        start_state=start_state,
        state_out=lambda state, record: states.append(state),
    )
    del start_state
    for record in fit:
        final = bool(record.get("is_final"))
        out = {k: v for k, v in record.items() if final or _is_scalar(v)}
        value = out.get(metric)
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            out[metric] = _objective_stand_in(metric, mode)
            out[REPLACED_KEY] = True
        out["node_id"] = node_id
        out["resumed_from_epoch"] = start_epoch
        if resume_error:
            out["resume_error"] = resume_error
        state = states.pop() if states else None
        if state is None or not checkpoints:
            tune.report(out)
            continue
        kept = {k: v for k, v in out.items() if _is_scalar(v) and k != REPLACED_KEY}
        if out.get(REPLACED_KEY):
            kept[metric] = float("nan")  # as the tables record it (see _record)
        history.append(kept)
        with tempfile.TemporaryDirectory(prefix="ae4ad-checkpoint-") as folder:
            save_checkpoint(folder, state, extra={"trial_id": tid})
            text = json.dumps(history, default=str, allow_nan=True)
            (Path(folder) / RECORDS_FILE).write_text(text, encoding="utf-8")
            del state
            try:
                tune.report(out, checkpoint=tune.Checkpoint.from_directory(folder))
            except RuntimeError as exc:
                if "storage" not in str(exc).lower():
                    raise
                checkpoints = False  # storage not reachable from this node
                tune.report({**out, "checkpoint_error": " ".join(str(exc).split())[:300]})


def _trial_name(trial: Any) -> str:
    return str(trial.config.get("trial_id", trial.trial_id))


# --------------------------------------------------------------------------- progress


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _clock(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Compact progress lines: one per finished trial, a summary now and then."""

    def __init__(
        self,
        space: Space,
        total: int,
        already_done: Mapping[str, int],
        best: Mapping[str, float],
        out: TextIO,
        interval_s: float,
    ) -> None:
        self.total = total
        self.out = out
        self.interval_s = interval_s
        self.metric = space.scheduler.metric
        self.mode = space.scheduler.mode
        self.counts = {s: int(already_done.get(s, 0)) for s in FINISHED_STATUSES}
        self.done_before = sum(self.counts.values())
        self.best: dict[str, float] = dict(best)
        self.running = 0
        self.started = time.monotonic()
        self.last_line = self.started
        self.show = _shown_keys(space)

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def _better(self, new: float, old: float | None) -> bool:
        if old is None:
            return True
        return new > old if self.mode == "max" else new < old

    def finished(self, row: Mapping[str, Any]) -> None:
        status = row["status"]
        self.counts[status] = self.counts.get(status, 0) + 1
        value = row.get(self.metric)
        stratum = str(row.get("stratum"))
        if (
            status == "completed"
            and isinstance(value, (int, float))
            and math.isfinite(value)
            and self._better(float(value), self.best.get(stratum))
        ):
            self.best[stratum] = float(value)
        params = " ".join(f"{k}={_short(row.get(k))}" for k in self.show if row.get(k) is not None)
        if status == "completed" or status == "early-stopped":
            what = f"{self.metric}={value:.3f}" if isinstance(value, (int, float)) else ""
            if status == "early-stopped":
                what += f" (stopped at epoch {row.get('epochs_done')})"
        else:
            what = str(row.get("error") or "").splitlines()[0][:120] if row.get("error") else ""
        wall = row.get("wall_s")
        took = f" {wall:.1f} s" if isinstance(wall, (int, float)) else ""
        width = len(str(self.total))
        self._print(
            f"[{self.done:>{width}}/{self.total}] {status:<13} {row.get('stratum')} {params} "
            f"{what}{took} | {self._eta()}"
        )

    def _eta(self) -> str:
        elapsed = time.monotonic() - self.started
        done_now = self.done - self.done_before
        remaining = max(0, self.total - self.done)
        if done_now > 0 and remaining > 0:
            left = f", ~{_clock(elapsed / done_now * remaining)} left"
        elif remaining == 0:
            left = ""
        else:
            left = ", time left: estimated after the first trial"
        return f"{_clock(elapsed)} elapsed{left}"

    def summary(self) -> str:
        parts = [f"{self.done}/{self.total} done", f"{self.running} running"]
        for status in ("errored", "diverged", "early-stopped"):
            if self.counts.get(status):
                parts.append(f"{self.counts[status]} {status}")
        best = ", ".join(f"{k} {v:.3f}" for k, v in sorted(self.best.items()))
        line = ", ".join(parts)
        if best:
            line += f" | best {self.metric}: {best}"
        return f"{line} | {self._eta()}"

    def tick(self, running: int) -> None:
        self.running = running
        if time.monotonic() - self.last_line >= self.interval_s:
            self._print(self.summary())

    def _print(self, line: str) -> None:
        self.last_line = time.monotonic()
        print(line.rstrip(), file=self.out, flush=True)


def _shown_keys(space: Space) -> list[str]:
    """The config keys that tell trials apart in progress lines."""
    keys: list[str] = []
    for model in space.models:
        keys += [k for k, s in model.params.items() if not s.is_fixed and k not in keys]
    for dataset in space.datasets:
        for k, s in space.training_for(dataset).items():
            if not s.is_fixed and k not in keys:
                keys.append(k)
    if len(space.seeds) > 1 or space.search.type == "optuna":
        keys.append("seed")
    return keys


# --------------------------------------------------------------------------- driver side


def _record(result: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """A reported result without the keys Ray Tune adds; the objective's stand-in
    value (see :func:`train_trial`) turned back into NaN."""
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


class _Collector:
    """The driver's bookkeeping of running trials: records as they are reported, a row
    in the tables and a progress line when a trial ends."""

    def __init__(
        self, space: Space, tables: RunTables, progress: Progress, metric: str, session: int
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
        self.prior: dict[str, list[dict]] = {}
        self.keeper: Any = None  # a study.checkpoints.ModelKeeper
        self.reported: set[str] = set()

    def start(self, trial: Any) -> None:
        if trial.trial_id in self.records:
            return  # Tune restarted it after a failure: it keeps its records
        tid = str(trial.config.get("trial_id") or trial.trial_id)
        self.records[trial.trial_id] = [dict(r) for r in self.prior.get(tid, [])]
        self.started[trial.trial_id] = (time.monotonic(), utc_now())
        self.trials_started += 1

    def retry(self, trial: Any) -> None:
        pass  # it continues from its last checkpoint: result() drops what it reports again

    def result(self, trial: Any, result: dict[str, Any]) -> None:
        record, replaced = _record(result)
        if replaced:
            record[self.metric] = float("nan")
        record["_where"] = (result.get("hostname"), result.get("node_ip"), result.get("node_id"))
        records = self.records.setdefault(trial.trial_id, [])
        epoch = record.get("epoch")
        if isinstance(epoch, int) and records:  # a restart: drop records it repeats
            records[:] = [r for r in records if int(r.get("epoch") or 0) < epoch]
        records.append(record)
        self.reported.add(trial.trial_id)
        # Tune keeps each trial's last result in its experiment state, rewritten now and
        # then: the per-image lists live in the record only (Tune lets callbacks edit it)
        for key in _BULKY_KEYS:
            result.pop(key, None)

    def step(self, trials: Sequence[Any]) -> None:
        self.progress.tick(sum(1 for t in trials if t.status == "RUNNING"))
        self.tables.flush_if_due()

    def finish(self, trial: Any, error: str | None) -> None:
        records = self.records.pop(trial.trial_id, [])
        start = self.started.pop(trial.trial_id, None)
        if trial.trial_id not in self.reported and error is None:
            return  # stopped before it ran (end of the study): not a result
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
        config = dict(trial.config)
        tid = str(config.get("trial_id") or trial_id(config))
        self.tables.add_trial(
            config, records, trial_id=tid, study=self.space.name, error=error,
            errored=error is not None, timing=timing,
        )  # fmt: skip
        if self.keeper is not None:
            self.keeper.finished(tid, getattr(trial, "checkpoint", None))
        _drop_bulky_checkpoint_metrics(trial)
        self.tables.flush_if_due()
        self.trials_finished += 1
        row = next(r for r in reversed(self.tables.rows()) if r["trial_id"] == tid)
        self.progress.finished(row)


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


def _tune_callback(collector: _Collector):
    """A Ray Tune callback that hands every event to ``collector``."""
    from ray.tune import Callback

    class StudyCallback(Callback):
        def __init__(self, collector: _Collector | None) -> None:
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

    return callbacks(space, _record)


def _scheduler(space: Space, tables: RunTables | None = None, out: TextIO | None = None):
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
            stand_in=_objective_stand_in(metric, mode),
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


def _planned_grid(space: Space) -> list[dict[str, Any]]:
    planned, seen = [], set()
    for config in grid_trials(space):
        config = dict(config)
        config["trial_id"] = trial_id(config)
        if config["trial_id"] not in seen:
            seen.add(config["trial_id"])
            planned.append(config)
    return planned


def _preflight(configs: Sequence[Mapping[str, Any]]) -> None:
    """Check the fit configs before Ray starts (unknown keys, bad values)."""
    from ae4ad.train import ConfigError, TrainConfig

    for config in configs:
        try:
            TrainConfig.from_dict(fit_config(config))
        except ConfigError as exc:
            raise StudyError(f"trial {config.get('trial_id')}: {exc}") from None


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


@contextlib.contextmanager
def _pending_trials(n: int | None):
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


class _Interrupted(BaseException):
    """SIGTERM during a run (e.g. `ray job stop`): handled like Ctrl-C."""


def run_study(space: Space, options: RunOptions | None = None) -> RunResult:
    """Run (or resume) the study of ``space``; returns where the results are.

    Raises :class:`StudyError` (before Ray starts, where it can) for: a run folder that
    already holds results without ``resume``; data that cannot be loaded; trial configs
    ae4ad.fit rejects; resources the cluster cannot provide.
    """
    options = options or RunOptions()
    out = options.out or sys.stdout
    run_dir = space.run_dir
    if has_results(run_dir) and not options.resume:
        raise StudyError(
            f"{run_dir} already holds results of study {space.name!r}; pass --resume to "
            f"continue it, or choose another name (--override name=...)"
        )
    tables = RunTables.load(run_dir) if options.resume else RunTables(run_dir)
    study_strata = [s.key for s in strata(space)]
    metric, mode = space.scheduler.metric, space.scheduler.mode

    if space.search.type == "grid":
        planned = _planned_grid(space)
        planned_ids = {c["trial_id"] for c in planned}
        todo = [c for c in planned if c["trial_id"] not in tables.done_ids]
        total = len(planned)
        already = len(planned) - len(todo)
        _preflight(todo)

        def belongs(row: Mapping[str, Any]) -> bool:
            return row.get("trial_id") in planned_ids
    else:
        budget = int(space.search.n_trials or 0)
        counts = tables.count_by("stratum")
        already = sum(min(budget, counts.get(k, 0)) for k in study_strata)
        total = budget * len(study_strata)
        todo = []
        from study.searcher import make_sampler

        make_sampler(space.search.sampler or "tpe", 0)  # e.g. cmaes without its package

        def belongs(row: Mapping[str, Any]) -> bool:
            return row.get("stratum") in study_strata

    to_run = total - already
    keep_models = _keep_models_policy(options.keep_models, total)

    if to_run > 0 and space.logging.trackers:
        from study import trackers

        try:
            trackers.check(space)  # a missing package: one line, before Ray starts
        except trackers.TrackerError as exc:
            raise StudyError(str(exc)) from None
    datasets = _load_datasets(space) if to_run > 0 else {}
    _quiet_libraries()
    started_ray = start_ray(options)
    session = len(read_meta(run_dir).get("sessions", [])) + 1
    status = "interrupted"
    callback = None
    previous_term = None
    session_open = False
    trials_wall = 0.0
    keeper = None
    try:
        import ray
        from ray import tune

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        bundle = check_resources(space, nodes)
        concurrency = _concurrency(space, bundle, nodes)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / SPACE_FILE, yaml.safe_dump(space.to_dict(), sort_keys=False))
        meta = read_meta(run_dir)
        sessions = list(meta.get("sessions", []))
        sessions.append(
            {
                "session": session,
                "started_at": utc_now(),
                "hostname": socket.gethostname(),
                "ray_address": options.address or os.environ.get("RAY_ADDRESS") or "local",
                "resumed": bool(options.resume and already),
                "trials_already_finished": already,
                "trials_started": 0,
                "trials_finished": 0,
                "keep_models": keep_models,
            }
        )
        update_meta(
            run_dir, study=space.name, status="running", started_at=meta.get("started_at")
            or utc_now(), finished_at=None, sessions=sessions,
        )  # fmt: skip
        session_open = True

        where = options.address or os.environ.get("RAY_ADDRESS") or "embedded Ray on 127.0.0.1"
        cpus = sum(float(n.get("CPU", 0)) for n in nodes)
        gpus = sum(float(n.get("GPU", 0)) for n in nodes)
        per_trial = ", ".join(f"{k}={v:g}" for k, v in bundle.items())
        print(
            f"study {space.name}: {total} trials ({space.search.type}) in "
            f"{len(study_strata)} strat{'um' if len(study_strata) == 1 else 'a'}; "
            f"{already} already finished, {to_run} to run",
            file=out,
            flush=True,
        )
        print(
            f"ray: {where} ({len(nodes)} node{'s' if len(nodes) != 1 else ''}, {cpus:g} CPUs, "
            f"{gpus:g} GPUs); per trial {per_trial}; up to {concurrency} at once",
            file=out,
            flush=True,
        )
        print(f"results: {run_dir}", file=out, flush=True)
        if space.logging.trackers:
            from study.trackers import describe

            for line in describe(space):
                print(line, file=out, flush=True)
        keeper, resume_from, prior = _checkpoint_setup(
            space, tables, keep_models, options, nodes, out
        )

        best: dict[str, float] = {}
        for row in tables.rows():
            if not belongs(row):
                continue
            value = row.get(metric)
            if row.get("status") == "completed" and isinstance(value, (int, float)):
                if math.isfinite(value):
                    key = str(row.get("stratum"))
                    old = best.get(key)
                    if old is None or (value > old if mode == "max" else value < old):
                        best[key] = float(value)
        progress = Progress(
            space,
            total,
            _status_counts(tables, belongs),
            best,
            out,
            options.progress_interval_s,
        )
        if to_run <= 0:
            status = "finished"
            print("nothing to run: every planned trial has finished", file=out, flush=True)
        else:
            if space.search.type == "grid":
                from study.searcher import PlanSearcher

                searcher = PlanSearcher(todo)
            else:
                from study.searcher import StratifiedOptunaSearcher

                finished = {
                    str(r["trial_id"]): (str(r["status"]), r.get(metric), r.get("epochs_done"))
                    for r in tables.rows()
                }
                searcher = StratifiedOptunaSearcher(
                    space,
                    f"sqlite:///{run_dir / OPTUNA_FILE}",
                    done_counts=tables.count_by("stratum"),
                    finished=finished,
                    metric=metric,
                    mode=mode,
                )
                if searcher.recovered["failed"] or searcher.recovered["told"]:
                    print(
                        f"optuna: {searcher.recovered['failed']} trial(s) an interrupted run "
                        f"left running marked FAIL, {searcher.recovered['told']} recorded "
                        "from the trials table",
                        file=out,
                        flush=True,
                    )
            refs = {label: ray.put(ds) for label, ds in datasets.items()}
            trainable = tune.with_parameters(
                train_trial, datasets=refs, objective=(metric, mode), resume_from=resume_from
            )
            trainable = tune.with_resources(trainable, tune.PlacementGroupFactory([bundle]))
            callback = _Collector(space, tables, progress, metric, session)
            callback.prior, callback.keeper = prior, keeper
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    scheduler=_scheduler(space, tables, out),
                    num_samples=-1,
                    max_concurrent_trials=space.resources.max_concurrent_trials,
                    reuse_actors=True,
                    trial_name_creator=_trial_name,
                    trial_dirname_creator=_trial_name,
                ),
                run_config=tune.RunConfig(
                    name=f"session-{session}",
                    storage_path=keeper.tune_storage,
                    checkpoint_config=tune.CheckpointConfig(  # the last and the best
                        num_to_keep=1,
                        checkpoint_score_attribute=metric,
                        checkpoint_score_order=mode,
                    ),
                    verbose=0,
                    callbacks=[_tune_callback(callback), *_tracker_callbacks(space)],
                    failure_config=tune.FailureConfig(
                        max_failures=space.max_failures, fail_fast=False
                    ),
                ),
            )

            def on_term(signum, frame):  # noqa: ANN001
                raise _Interrupted()

            if threading.current_thread() is threading.main_thread():
                previous_term = signal.signal(signal.SIGTERM, on_term)
            fit_started = time.perf_counter()
            with _pending_trials(concurrency if space.search.type == "grid" else None):
                try:
                    tuner.fit()
                finally:
                    trials_wall = time.perf_counter() - fit_started
            status = "finished"
    except (KeyboardInterrupt, _Interrupted):
        status = "interrupted"
        print("\ninterrupted: stopping the study and saving what finished", file=out, flush=True)
    finally:
        if previous_term is not None:
            with contextlib.suppress(Exception):
                signal.signal(signal.SIGTERM, previous_term)
        if keeper is not None:
            _finish_checkpoints(keeper, status, out)
        if session_open:
            with contextlib.suppress(Exception):
                tables.flush_if_due(force=True)
        if started_ray:
            import ray

            with contextlib.suppress(Exception):
                ray.shutdown()
        meta = read_meta(run_dir) if session_open else {}
        if meta:
            sessions = list(meta.get("sessions", []))
            if sessions and sessions[-1].get("session") == session:
                sessions[-1]["finished_at"] = utc_now()
                sessions[-1]["status"] = status
                if callback is not None:
                    sessions[-1]["trials_started"] = callback.trials_started
                    sessions[-1]["trials_finished"] = callback.trials_finished
            update_meta(run_dir, status=status, finished_at=utc_now(), sessions=sessions)

    counts = _status_counts(tables, belongs)
    if status == "finished" and sum(counts.values()) < total:
        print(
            f"warning: {total - sum(counts.values())} planned trial(s) have no result; "
            "--resume runs them",
            file=out,
            flush=True,
        )
    result = RunResult(
        run_dir=run_dir,
        status=status,
        counts=counts,
        trials_run=callback.trials_finished if callback is not None else 0,
        trials_wall_s=trials_wall,
    )
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in FINISHED_STATUSES if counts.get(s))
    print(f"{status}: {summary or 'no trials'} (of {total} planned)", file=out, flush=True)
    if options.report and status == "finished" and sum(counts.values()):
        result.report = _write_report(run_dir, out, options.alpha)
    print(f"results: {run_dir}", file=out, flush=True)
    return result


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
    study, print what the run folder holds."""
    from study.results import disk_used_text

    try:
        keeper.finalize(finished=status == "finished")
        print(f"disk: {disk_used_text(keeper.tables.run_dir)}", file=out, flush=True)
    except Exception as exc:  # noqa: BLE001 - the tables are safe; say what failed
        print(f"warning: cleaning up checkpoints failed ({type(exc).__name__}: {exc})", file=out)


def _status_counts(tables: RunTables, belongs) -> dict[str, int]:  # noqa: ANN001
    """Rows per status, of the rows for which ``belongs(row)`` (the trials of this plan;
    a resumed folder may also hold rows of configs the space no longer has)."""
    counts = {s: 0 for s in FINISHED_STATUSES}
    for row in tables.rows():
        if belongs(row):
            counts[str(row["status"])] = counts.get(str(row["status"]), 0) + 1
    return counts


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
