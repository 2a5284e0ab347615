"""The result tables of a study run, kept in ``<storage_path>/<study name>/``.

- ``trials.parquet`` (+ ``trials.csv``): one row per finished trial (its config, its
  status, the final record's metrics under plain names, ``best_*`` over epochs, timings
  and where it ran).
- ``history.parquet``: one row per evaluation of every trial.
- ``scores.parquet``: the per-image test scores and labels of every trial.
- ``examples.json``: a few test images with reconstructions and anomaly maps per trial.
- ``models/<trial_id>.pt``: the final model of the trials ``--keep-models`` keeps
  (:mod:`ae4ad.trained`); ``checkpoint_path`` (relative to the run folder) and
  ``checkpoint_epoch`` in trials.parquet index them (None where no model is kept).
- ``space.yaml``: the resolved space; ``meta.json``: versions, git revision, timestamps
  and the run's status.

Every file is written to a temporary name and then renamed over the old one, so a
killed study leaves complete tables of the trials that had finished. Nothing here
imports Ray: the report and notebooks read these tables with pandas alone.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> config = {"dataset_label": "phantom", "model_label": "ae", "stratum": "phantom/ae",
    ...           "dataset": "phantom", "dataset_params": {"image_size": 32}, "model": "ae",
    ...           "model_params": {"latent_dim": 4}, "epochs": 1, "batch_size": 64,
    ...           "lr": 1e-3, "weight_decay": 0.0, "eval_every": 1, "score": "l2",
    ...           "device": "auto", "seed": 0, "threads": 1}
    >>> record = {"epoch": 1, "status": "completed", "is_final": True, "auc": 0.75,
    ...           "ap": 0.7, "scores": [0.1, 0.9], "labels": [0, 1]}
    >>> tables = RunTables(Path(tempfile.mkdtemp()))
    >>> tables.add_trial(config, [record], trial_id="t0", study="toy")
    'completed'
    >>> tables.flush()
    >>> df = read_trials(tables.run_dir)
    >>> df.loc[0, "status"], float(df.loc[0, "auc"]), float(df.loc[0, "best_auc"])
    ('completed', 0.75, 0.75)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ae4ad.atomic import atomic_write, atomic_write_bytes, atomic_write_text
from ae4ad.metrics import METRICS, get_metric

__all__ = [
    "BEST_METRICS",
    "FINISHED_STATUSES",
    "RunTables",
    "TrialTiming",
    "atomic_write_bytes",
    "atomic_write_text",
    "disk_used",
    "format_bytes",
    "git_revision",
    "has_results",
    "history_rows",
    "package_versions",
    "read_meta",
    "read_trials",
    "trial_row",
    "trial_status",
    "update_meta",
    "utc_now",
]

TRIALS_FILE = "trials.parquet"
TRIALS_CSV = "trials.csv"
HISTORY_FILE = "history.parquet"
SCORES_FILE = "scores.parquet"
EXAMPLES_FILE = "examples.json"
META_FILE = "meta.json"
SPACE_FILE = "space.yaml"
OPTUNA_FILE = "optuna.db"

FINISHED_STATUSES = ("completed", "errored", "early-stopped", "diverged")

# Column order of trials.parquet; keys not listed here follow in the order met.
IDENTITY_COLUMNS = (
    "study",
    "trial_id",
    "status",
    "error",
    "dataset",
    "dataset_source",
    "model",
    "model_name",
    "stratum",
    "seed",
)
MODEL_PARAM_ORDER = (
    "latent_dim",
    "hidden_dim",
    "base_width",
    "expansion",
    "encoder_depth",
    "decoder_depth",
    "num_blocks",
)
TRAINING_COLUMNS = (
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "eval_every",
    "score",
    "bf16",
    "channels_last",
)
# Record keys that are not metrics but belong beside one: (metric, [its companions]).
_COMPANION_COLUMNS = {"dice_threshold": ("dice_threshold_source",)}
METRIC_COLUMNS: tuple[str, ...] = tuple(
    column for name in METRICS for column in (name, *_COMPANION_COLUMNS.get(name, ()))
)
"""Every registered metric (:data:`ae4ad.metrics.METRICS`, in its order) and its
companion columns."""
BEST_METRICS: tuple[str, ...] = tuple(name for name, m in METRICS.items() if m.best_column)
"""The metrics whose best value over a trial's evaluations is kept as ``best_<name>``."""
RUN_COLUMNS = (
    "epochs_done",
    "elapsed_s",
    "train_time_s",
    "wall_s",
    "started_at",
    "finished_at",
    "device",
    "threads",
    "hostname",
    "node_ip",
    "node_id",
    "session",
    "checkpoint_path",
    "checkpoint_epoch",
)
# Keys of a trial config that are not columns of their own (or are renamed).
_CONFIG_SKIP = {
    "dataset_label",
    "model_label",
    "stratum",
    "dataset",
    "model",
    "dataset_params",
    "model_params",
    "device",
    "threads",
    "trial_id",
}
# Keys of a record that are not metrics.
_RECORD_SKIP = {"status", "is_final", "epoch", "error", "scores", "labels", "examples"}
# Identity columns repeated in history.parquet and scores.parquet.
_KEY_COLUMNS = ("trial_id", "dataset", "model", "latent_dim", "seed")


# --------------------------------------------------------------------------- small helpers


def utc_now() -> str:
    """The current time as an ISO 8601 string in UTC, to the millisecond."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN: replace non-finite floats (recursively) by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _atomic_frame(path: Path, frame: pd.DataFrame, kind: str) -> None:
    if kind == "parquet":
        atomic_write(path, lambda f: frame.to_parquet(f, index=False))
    else:
        atomic_write_text(path, frame.to_csv(index=False))


# --------------------------------------------------------------------------- rows


def trial_status(records: Sequence[Mapping[str, Any]], errored: bool = False) -> str:
    """The status of a finished trial from its records.

    errored (it raised) > diverged (the last record says so) > completed (the last
    record is the final one) > early-stopped (the scheduler stopped it before its last
    epoch).

    >>> trial_status([{"status": "running", "is_final": False}])
    'early-stopped'
    >>> trial_status([{"status": "completed", "is_final": True}])
    'completed'
    """
    if errored:
        return "errored"
    if not records:
        return "early-stopped"
    last = records[-1]
    if last.get("status") == "diverged":
        return "diverged"
    if last.get("is_final"):
        return "completed"
    return "early-stopped"


def _best(records: Sequence[Mapping[str, Any]], key: str) -> float | None:
    """The best finite value of ``key`` over ``records``, by the metric's direction."""
    return get_metric(key).best(r.get(key) for r in records)


@dataclass
class TrialTiming:
    """When and where one trial ran (the driver's view)."""

    started_at: str | None = None
    finished_at: str | None = None
    wall_s: float | None = None
    hostname: str | None = None
    node_ip: str | None = None
    node_id: str | None = None
    session: int | None = None


def trial_row(
    config: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    *,
    trial_id: str,
    study: str,
    status: str,
    error: str | None = None,
    timing: TrialTiming | None = None,
) -> dict[str, Any]:
    """One row of trials.parquet: the trial's config, its status, the metrics of its
    last record under plain names (:data:`METRIC_COLUMNS`; None where the record has
    none) and the best value over its evaluations of each of :data:`BEST_METRICS` as
    ``best_<metric>``."""
    row = _config_columns(config, trial_id=trial_id, study=study, status=status, error=error)
    row.update(_metric_columns(records, status))
    last = records[-1] if records else {}
    if error is None and last.get("error"):
        row["error"] = str(last["error"])
    timing = timing or TrialTiming()
    row.update(
        epochs_done=last.get("epoch", 0) if records else 0,
        elapsed_s=last.get("elapsed_s"),
        train_time_s=last.get("train_time_s"),
        wall_s=timing.wall_s,
        started_at=timing.started_at,
        finished_at=timing.finished_at,
        device=last.get("device"),
        threads=config.get("threads"),
        hostname=timing.hostname,
        node_ip=timing.node_ip,
        node_id=timing.node_id,
        session=timing.session,
        checkpoint_path=None,  # set by the run when it keeps the trial's model
        checkpoint_epoch=None,
    )
    for key, value in last.items():
        if key not in _RECORD_SKIP and key not in row and _is_scalar(value):
            row[key] = value
    return row


def _config_columns(config: Mapping[str, Any], **identity: Any) -> dict[str, Any]:
    """A row's identity and config columns: labels, model params, training settings,
    the data set's params (as JSON and one ``data_<key>`` column each)."""
    model_params = dict(config.get("model_params") or {})
    dataset_params = dict(config.get("dataset_params") or {})
    row: dict[str, Any] = {
        "study": identity["study"],
        "trial_id": identity["trial_id"],
        "status": identity["status"],
        "error": identity["error"],
        "dataset": config.get("dataset_label", config.get("dataset")),
        "dataset_source": config.get("dataset"),
        "model": config.get("model_label", config.get("model")),
        "model_name": config.get("model"),
        "stratum": config.get("stratum"),
        "seed": config.get("seed"),
    }
    for key in sorted(model_params, key=_param_rank):
        row[key] = model_params[key]
    for key in TRAINING_COLUMNS:
        if key in config:
            row[key] = config[key]
    for key, value in config.items():
        if key not in _CONFIG_SKIP and key not in row and _is_scalar(value):
            row[key] = value
    row["dataset_params"] = json.dumps(dataset_params, sort_keys=True, default=str)
    for key, value in dataset_params.items():
        if _is_scalar(value):
            row[f"data_{key}"] = value
    return row


def _metric_columns(records: Sequence[Mapping[str, Any]], status: str) -> dict[str, Any]:
    """The last record's metrics and the best of each of :data:`BEST_METRICS`; a
    diverged trial keeps only its training loss."""
    last = records[-1] if records else {}
    row = {key: last.get(key) for key in METRIC_COLUMNS}
    row.update({f"best_{key}": _best(records, key) for key in BEST_METRICS})
    if status == "diverged":
        for key in METRIC_COLUMNS:
            if key != "train_loss" and isinstance(row[key], (int, float)):
                row[key] = float("nan")
        row.update({f"best_{key}": None for key in BEST_METRICS})
    return row


def _param_rank(key: str) -> tuple[int, str]:
    order = {k: i for i, k in enumerate(MODEL_PARAM_ORDER)}
    return (order.get(key, len(order)), key)


def history_rows(
    config: Mapping[str, Any], records: Sequence[Mapping[str, Any]], trial_id: str
) -> list[dict[str, Any]]:
    """The rows of history.parquet for one trial: one per record, scalars only."""
    keys = _key_values(config, trial_id)
    rows = []
    for record in records:
        row = dict(keys)
        row["epoch"] = record.get("epoch")
        for key, value in record.items():
            if key not in row and key not in ("scores", "labels", "examples") and _is_scalar(value):
                row[key] = value
        rows.append(row)
    return rows


def _key_values(config: Mapping[str, Any], trial_id: str) -> dict[str, Any]:
    return {
        "trial_id": trial_id,
        "dataset": config.get("dataset_label", config.get("dataset")),
        "model": config.get("model_label", config.get("model")),
        "latent_dim": (config.get("model_params") or {}).get("latent_dim"),
        "seed": config.get("seed"),
    }


# --------------------------------------------------------------------------- tables


class RunTables:
    """The tables of one run folder, held in memory and rewritten atomically.

    ``RunTables.load(run_dir)`` reads what an earlier (possibly killed) run left, keeping
    only trials with a finished status and their history, scores and examples; the ids
    in :attr:`done_ids` are not run again.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._trials: dict[str, dict[str, Any]] = {}
        self._history: list[pd.DataFrame] = []
        self._scores: list[pd.DataFrame] = []
        self._examples: dict[str, Any] = {}
        self._dirty = False
        self._last_flush = 0.0
        self._flush_cost = 0.0

    # ------------------------------------------------------------------ reading

    @classmethod
    def load(cls, run_dir: Path) -> RunTables:
        tables = cls(run_dir)
        for stale in Path(run_dir).glob(".*.tmp"):  # left by a run killed mid-write
            with contextlib.suppress(OSError):
                stale.unlink()
        trials = read_trials(run_dir)
        if trials is None or trials.empty:
            return tables
        trials = trials[trials["status"].isin(FINISHED_STATUSES)]
        trials = trials.drop_duplicates("trial_id", keep="last")
        for row in trials.to_dict("records"):
            tables._trials[str(row["trial_id"])] = row
        done = set(tables._trials)
        for name, target in ((HISTORY_FILE, tables._history), (SCORES_FILE, tables._scores)):
            path = tables.run_dir / name
            if path.is_file():
                frame = pd.read_parquet(path)
                target.append(frame[frame["trial_id"].isin(done)])
        examples_path = tables.run_dir / EXAMPLES_FILE
        if examples_path.is_file():
            with contextlib.suppress(ValueError, OSError):
                examples = json.loads(examples_path.read_text(encoding="utf-8"))
                tables._examples = {k: v for k, v in examples.items() if k in done}
        return tables

    @property
    def done_ids(self) -> set[str]:
        """Ids of the trials that have a row."""
        return set(self._trials)

    def rows(self) -> list[dict[str, Any]]:
        return list(self._trials.values())

    def get(self, trial_id: str) -> dict[str, Any] | None:
        """The row of one trial, or None."""
        return self._trials.get(trial_id)

    def set_values(self, trial_id: str, **values: Any) -> None:
        """Change columns of one trial's row (e.g. ``checkpoint_path``)."""
        row = self._trials.get(trial_id)
        if row is None:
            return
        if any(row.get(k) != v for k, v in values.items()):
            row.update(values)
            self._dirty = True

    def count_by(self, column: str) -> dict[Any, int]:
        """Number of rows per value of ``column`` (e.g. ``stratum``)."""
        counts: dict[Any, int] = {}
        for row in self._trials.values():
            counts[row.get(column)] = counts.get(row.get(column), 0) + 1
        return counts

    # ------------------------------------------------------------------ writing

    def add_trial(
        self,
        config: Mapping[str, Any],
        records: Sequence[Mapping[str, Any]],
        *,
        trial_id: str,
        study: str,
        error: str | None = None,
        errored: bool = False,
        timing: TrialTiming | None = None,
    ) -> str:
        """Add (or replace) one finished trial; returns its status."""
        status = trial_status(records, errored=errored or error is not None)
        row = trial_row(
            config, records, trial_id=trial_id, study=study, status=status, error=error,
            timing=timing,
        )  # fmt: skip
        if self._trials.pop(trial_id, None) is not None:  # a trial run again: drop its old
            self._drop_details(trial_id)  # details (a scan of every table: only when needed)
        self._trials[trial_id] = row
        if records:
            self._history.append(pd.DataFrame(history_rows(config, records, trial_id)))
        last = records[-1] if records else {}
        scores, labels = last.get("scores"), last.get("labels")
        if status == "completed" and scores is not None and labels is not None:
            frame = pd.DataFrame({"index": range(len(scores)), "score": scores, "label": labels})
            for key, value in reversed(_key_values(config, trial_id).items()):
                frame.insert(0, key, value)
            self._scores.append(frame)
        if status == "completed" and last.get("examples") is not None:
            self._examples[trial_id] = _finite_or_none(last["examples"])
        self._dirty = True
        return status

    def _drop_details(self, trial_id: str) -> None:
        for frames in (self._history, self._scores):
            for i, frame in enumerate(frames):
                if len(frame) and (frame["trial_id"] == trial_id).any():
                    frames[i] = frame[frame["trial_id"] != trial_id]
        self._examples.pop(trial_id, None)

    def trials_frame(self) -> pd.DataFrame:
        """trials.parquet as a DataFrame, columns in the documented order."""
        rows = list(self._trials.values())
        if not rows:
            return pd.DataFrame(columns=list(IDENTITY_COLUMNS))
        frame = pd.DataFrame(rows)
        return frame[_ordered_columns(frame.columns)]

    def flush(self) -> None:
        """Rewrite every table atomically (details first, trials.parquet last, so that a
        trial listed there always has its history, scores and examples)."""
        started = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _atomic_frame(self.run_dir / HISTORY_FILE, _concat(self._history, _KEY_COLUMNS), "parquet")
        scores_columns = (*_KEY_COLUMNS, "index", "score", "label")
        _atomic_frame(self.run_dir / SCORES_FILE, _concat(self._scores, scores_columns), "parquet")
        atomic_write_text(
            self.run_dir / EXAMPLES_FILE, json.dumps(self._examples, separators=(",", ":"))
        )
        trials = self.trials_frame()
        _atomic_frame(self.run_dir / TRIALS_FILE, trials, "parquet")
        _atomic_frame(self.run_dir / TRIALS_CSV, trials, "csv")
        self._dirty = False
        self._last_flush = time.monotonic()
        self._flush_cost = time.perf_counter() - started

    def flush_if_due(self, force: bool = False) -> bool:
        """Flush when there is something new, at most about every 5x the last flush's
        cost (so a large study does not spend its time rewriting tables)."""
        if not self._dirty:
            return False
        due = time.monotonic() - self._last_flush >= min(30.0, 5 * self._flush_cost)
        if force or due:
            self.flush()
            return True
        return False


def _concat(frames: Iterable[pd.DataFrame], columns: Sequence[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=list(columns))
    return pd.concat(frames, ignore_index=True)


def _ordered_columns(columns: Iterable[str]) -> list[str]:
    columns = list(columns)
    first = [
        *IDENTITY_COLUMNS,
        *sorted((c for c in columns if c in MODEL_PARAM_ORDER), key=_param_rank),
    ]
    known = [*first, *TRAINING_COLUMNS, *METRIC_COLUMNS]
    known += [f"best_{m}" for m in BEST_METRICS]
    known += list(RUN_COLUMNS)
    ordered = [c for c in known if c in columns]
    # other model params right after the known ones; everything else at the end
    rest = [c for c in columns if c not in ordered]
    return ordered + rest


def read_trials(run_dir: Path) -> pd.DataFrame | None:
    """trials.parquet of a run folder, or None when there is none yet."""
    path = Path(run_dir) / TRIALS_FILE
    if not path.is_file():
        return None
    return pd.read_parquet(path)


def has_results(run_dir: Path) -> bool:
    """Whether a run folder already holds at least one finished trial."""
    trials = read_trials(run_dir)
    return trials is not None and len(trials) > 0


# --------------------------------------------------------------------------- disk use


def format_bytes(n: float) -> str:
    """Bytes as a short readable size (1000-based units).

    >>> format_bytes(0), format_bytes(1234567)
    ('0 B', '1.2 MB')
    """
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"


def disk_used(run_dir: Path) -> dict[str, int]:
    """Bytes a run folder uses: ``total``, ``models`` (kept models, ``models_count``
    files), ``checkpoints`` (Tune's folder ``tune/``: checkpoints of unfinished trials
    and Tune's own files) and ``tables`` (everything else)."""
    run_dir = Path(run_dir)
    out = {"total": 0, "models": 0, "models_count": 0, "checkpoints": 0, "tables": 0}
    if not run_dir.is_dir():
        return out
    for path in run_dir.rglob("*"):
        try:
            if not path.is_file() or path.is_symlink():
                continue
            size = path.stat().st_size
        except OSError:
            continue
        top = path.relative_to(run_dir).parts[0]
        out["total"] += size
        if top == "models" and path.suffix == ".pt":
            out["models"] += size
            out["models_count"] += 1
        elif top == "tune":
            out["checkpoints"] += size
        else:
            out["tables"] += size
    return out


def disk_used_text(run_dir: Path) -> str:
    """:func:`disk_used` as one line, e.g. ``4.1 MB (models 3.2 MB in 16 files, ...)``."""
    d = disk_used(run_dir)
    return (
        f"{format_bytes(d['total'])} (models {format_bytes(d['models'])} in "
        f"{d['models_count']} file{'s' if d['models_count'] != 1 else ''}, checkpoints and "
        f"Tune's state {format_bytes(d['checkpoints'])}, tables and report "
        f"{format_bytes(d['tables'])})"
    )


# --------------------------------------------------------------------------- meta.json


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that shape the results (None when not installed)."""
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("ae4ad-study", "torch", "ray", "optuna", "numpy", "pandas", "pyarrow", "plotly"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision(path: Path | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding ``path`` (default:
    this package), or None outside a git checkout."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())} if commit else None


def read_meta(run_dir: Path) -> dict[str, Any]:
    """meta.json of a run folder ({} when missing or unreadable)."""
    path = Path(run_dir) / META_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def update_meta(run_dir: Path, **changes: Any) -> dict[str, Any]:
    """Merge ``changes`` into meta.json (created with versions, git revision, host and
    Python on first use) and write it atomically; returns the new content."""
    meta = read_meta(run_dir)
    if not meta:
        meta = {
            "created_at": utc_now(),
            "hostname": socket.gethostname(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "packages": package_versions(),
            "git": git_revision(),
            "sessions": [],
        }
    meta.update(changes)
    atomic_write_text(Path(run_dir) / META_FILE, json.dumps(_finite_or_none(meta), indent=2))
    return meta
