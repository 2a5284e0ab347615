"""The checkpoints of a study's trials and the models a run keeps.

Every evaluation of a trial reports a Ray Tune checkpoint (see
:func:`study.runner.train_trial`): a folder with ``model.pt`` and
``training_state.pt`` (:mod:`ae4ad.trained`) and ``records.json`` (the trial's
records so far, scalars only). Tune keeps the last and the best of each trial under
``<tune storage>/session-<n>/<trial_id>/checkpoint_<k>/``, where the tune storage is
``<run dir>/tune`` or, for a ``storage_path`` URI (``s3://``, ``gs://``,
``file://``), ``<storage_path>/<study name>/tune``.

- A trial restarted by Tune in the same session (a lost worker or node, with
  ``failure.max_failures``) continues from its latest checkpoint
  (``tune.get_checkpoint()``).
- ``--resume`` after the driver died: :func:`find_resume_checkpoints` finds the
  latest checkpoint of each unfinished trial in the earlier sessions' folders; the
  trial continues from it, and its records so far come from its ``records.json``.
- When a trial finishes, :class:`ModelKeeper` copies its final ``model.pt`` to
  ``<run dir>/models/<trial_id>.pt`` when ``--keep-models`` says so (``all``; ``best``:
  the best completed trial of each stratum; ``none``) and deletes the trial's Tune
  checkpoints, which only a resume needs.

Nothing here starts Ray; pyarrow's file systems read and delete checkpoints wherever
Tune put them.

Example:
    >>> default_keep_models(16), default_keep_models(101)
    ('all', 'best')
    >>> is_uri("s3://bucket/runs"), is_uri("/data/runs")
    (True, False)
"""

from __future__ import annotations

import contextlib
import json
import math
import posixpath
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from study.results import RunTables, atomic_write_bytes

__all__ = [
    "KEEP_MODELS",
    "MODELS_DIR",
    "RECORDS_FILE",
    "ModelKeeper",
    "default_keep_models",
    "delete_checkpoints",
    "find_resume_checkpoints",
    "is_uri",
    "read_records",
    "tune_storage_path",
]

KEEP_MODELS = ("none", "best", "all")
KEEP_ALL_UP_TO = 100  # default --keep-models: all for at most this many trials, else best
MODELS_DIR = "models"
RECORDS_FILE = "records.json"
MODEL_FILE = "model.pt"
STATE_FILE = "training_state.pt"
_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)$")
_SESSION_DIR = re.compile(r"session-(\d+)$")
KEPT_STATUSES = ("completed", "early-stopped")


def is_uri(path: Any) -> bool:
    """Whether ``path`` is a URI (``scheme://...``) rather than a local path."""
    return "://" in str(path)


def default_keep_models(n_trials: int) -> str:
    """``all`` for studies of at most 100 trials, ``best`` (per stratum) beyond."""
    return "all" if n_trials <= KEEP_ALL_UP_TO else "best"


def tune_storage_path(space: Any) -> str:
    """Where Ray Tune keeps the run's checkpoints (``RunConfig(storage_path=...)``):
    ``<storage_path>/<name>/tune`` for a URI storage path, else ``<run dir>/tune``."""
    storage = str(space.storage_path)
    if is_uri(storage):
        return f"{storage.rstrip('/')}/{space.name}/tune"
    return str(Path(space.run_dir) / "tune")


def _fs(path: str):
    """(pyarrow file system, path inside it) for a local path or a URI."""
    import pyarrow.fs as pafs

    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def _join(base: str, *parts: str) -> str:
    """``base`` (a path or URI) joined with ``parts``."""
    return posixpath.join(base.rstrip("/"), *parts) if is_uri(base) else str(Path(base, *parts))


def _children(fs, path: str) -> list[str]:
    """Base names of the folders directly under ``path`` (none when it is missing)."""
    import pyarrow.fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except (OSError, ValueError):
        return []
    return [posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory]


def _read_json(fs, path: str) -> Any:
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode("utf-8"))


def read_records(checkpoint: str) -> list[dict[str, Any]]:
    """The records a trial had reported up to ``checkpoint`` (a folder path or URI)."""
    fs, path = _fs(checkpoint)
    records = _read_json(fs, posixpath.join(path, RECORDS_FILE))
    return [dict(r) for r in records] if isinstance(records, list) else []


def find_resume_checkpoints(tune_storage: str, exclude: Iterable[str] = ()) -> dict[str, list[str]]:
    """The checkpoints of every trial under ``tune_storage`` (all sessions) except the
    ids in ``exclude``: trial id -> checkpoint folders (paths or URIs), latest epoch
    first; a fused bundle's checkpoint counts for each member in it. A checkpoint counts
    when its three files are there and its records.json reads (see :func:`_epoch_of`)."""
    skip = set(exclude)
    fs, root = _fs(tune_storage)
    found: dict[str, list[tuple[int, int, int, str]]] = {}
    for session_name in _children(fs, root):
        session = _SESSION_DIR.match(session_name)
        if not session:
            continue
        session_path = posixpath.join(root, session_name)
        for tid in _children(fs, session_path):
            if tid in skip:
                continue
            trial_path = posixpath.join(session_path, tid)
            for name in _children(fs, trial_path):
                index = _CHECKPOINT_DIR.match(name)
                if not index:
                    continue
                order = (int(session.group(1)), int(index.group(1)))
                folder = posixpath.join(trial_path, name)
                parts = [(tid, ())]
                if _epoch_of(fs, folder) is None:  # a fused bundle's: a folder per member
                    parts = [(m, (m,)) for m in _children(fs, folder) if m not in skip]
                for member, sub in parts:
                    epoch = _epoch_of(fs, posixpath.join(folder, *sub))
                    if epoch is not None:
                        where = _join(tune_storage, session_name, tid, name, *sub)
                        found.setdefault(member, []).append((epoch, *order, where))
    return {tid: [c[3] for c in sorted(cs, reverse=True)] for tid, cs in found.items()}


def _epoch_of(fs, folder: str) -> int | None:  # noqa: ANN001
    """The last epoch of a trial checkpoint folder; None unless its three files are
    there and its records.json reads (a driver killed while Tune copied one may leave it
    incomplete)."""
    import pyarrow.fs as pafs

    files = [posixpath.join(folder, f) for f in (MODEL_FILE, STATE_FILE, RECORDS_FILE)]
    infos = fs.get_file_info(files)
    if any(i.type != pafs.FileType.File or not i.size for i in infos):
        return None
    try:
        return int(_read_json(fs, files[2])[-1]["epoch"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def delete_checkpoints(folders: Iterable[str]) -> int:
    """Delete checkpoint folders (paths or URIs); returns how many were deleted."""
    deleted = 0
    for folder in folders:
        fs, path = _fs(folder)
        with contextlib.suppress(OSError, FileNotFoundError):
            fs.delete_dir(path)
            deleted += 1
    return deleted


def delete_all_checkpoints(tune_storage: str) -> int:
    """Delete every trial checkpoint under ``tune_storage`` (Tune's experiment files
    stay); returns how many folders were deleted."""
    everything = find_resume_checkpoints(tune_storage)
    # incomplete folders too: list them directly
    fs, root = _fs(tune_storage)
    folders = {c for cs in everything.values() for c in cs}
    for session_name in _children(fs, root):
        if not _SESSION_DIR.match(session_name):
            continue
        for tid in _children(fs, posixpath.join(root, session_name)):
            for name in _children(fs, posixpath.join(root, session_name, tid)):
                if _CHECKPOINT_DIR.match(name):
                    folders.add(_join(tune_storage, session_name, tid, name))
    return delete_checkpoints(sorted(folders))


def _better(new: Any, old: Any, mode: str) -> bool:
    if not (isinstance(new, (int, float)) and math.isfinite(float(new))):
        return False
    if not (isinstance(old, (int, float)) and math.isfinite(float(old))):
        return True
    return float(new) > float(old) if mode == "max" else float(new) < float(old)


class ModelKeeper:
    """Keeps the final model of finished trials in ``<run dir>/models/`` as
    ``--keep-models`` says, records ``checkpoint_path`` (relative to the run folder)
    and ``checkpoint_epoch`` in the trials table, and deletes the Tune checkpoints of
    finished trials."""

    def __init__(
        self,
        tables: RunTables,
        policy: str,
        metric: str,
        mode: str,
        tune_storage: str,
        earlier: Mapping[str, list[str]] | None = None,
    ) -> None:
        if policy not in KEEP_MODELS:
            raise ValueError(
                f"keep_models: expected one of {', '.join(KEEP_MODELS)}, got {policy!r}"
            )
        self.tables = tables
        self.policy = policy
        self.metric = metric
        self.mode = mode
        self.tune_storage = tune_storage
        self.earlier = {k: list(v) for k, v in (earlier or {}).items()}
        self.models_dir = Path(tables.run_dir) / MODELS_DIR
        self.why_missing: dict[str, str] = {}  # trial id -> why its model was not kept

    # ------------------------------------------------------------------ per trial

    def _best_of(self, stratum: Any, without: str | None = None) -> dict[str, Any] | None:
        best = None
        for row in self.tables.rows():
            if row.get("stratum") != stratum or row.get("trial_id") == without:
                continue
            if row.get("status") != "completed":
                continue
            if best is None or _better(row.get(self.metric), best.get(self.metric), self.mode):
                if isinstance(row.get(self.metric), (int, float)) and math.isfinite(
                    float(row[self.metric])
                ):
                    best = row
        return best

    def _wanted(self, row: Mapping[str, Any]) -> bool:
        if self.policy == "none" or row.get("status") not in KEPT_STATUSES:
            return False
        if self.policy == "all":
            return True
        best = self._best_of(row.get("stratum"))
        return best is not None and best.get("trial_id") == row.get("trial_id")

    def finished(self, trial_id: str, checkpoint: Any | None) -> str | None:
        """A trial's row is in the tables: keep its model if the policy says so (from
        ``checkpoint``, Tune's latest: a ``ray.tune.Checkpoint``), prune what the
        policy no longer keeps, delete its Tune checkpoints. Returns the kept path."""
        row = self.tables.get(trial_id)
        kept = None
        if row is not None and self._wanted(row):
            if checkpoint is None:
                self.why_missing[trial_id] = (
                    "Ray Tune holds no checkpoint of it (it reported none: see the "
                    "checkpoint_error column)"
                )
            else:
                kept = self._copy(trial_id, checkpoint)
        if self.policy == "best" and kept is not None:
            self.prune()
        folders = list(self.earlier.pop(trial_id, []))
        self.drop_checkpoints(checkpoint)
        delete_checkpoints(folders)
        return kept

    def drop_checkpoints(self, checkpoint: Any | None) -> None:
        """Delete the Tune checkpoints of the trial ``checkpoint`` (its latest) belongs
        to: its row and kept model hold what the run needs."""
        if checkpoint is None:
            return
        trial_dir = posixpath.dirname(str(checkpoint.path).rstrip("/"))
        fs = checkpoint.filesystem
        for name in _children(fs, trial_dir):
            if _CHECKPOINT_DIR.match(name):
                with contextlib.suppress(OSError, FileNotFoundError):
                    fs.delete_dir(posixpath.join(trial_dir, name))

    def _copy(self, trial_id: str, checkpoint: Any) -> str | None:
        fs, folder = checkpoint.filesystem, str(checkpoint.path)
        try:
            with fs.open_input_stream(posixpath.join(folder, MODEL_FILE)) as f:
                data = f.read()
            records = _read_json(fs, posixpath.join(folder, RECORDS_FILE))
            epoch = int(records[-1]["epoch"])
        except FileNotFoundError:
            self.why_missing[trial_id] = f"its last checkpoint holds no {MODEL_FILE} ({folder})"
            return None
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            text = " ".join(str(exc).split())[:200]
            self.why_missing[trial_id] = (
                f"its last checkpoint ({folder}) did not read: {type(exc).__name__}: {text}"
            )
            return None
        self.models_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.models_dir / f"{trial_id}.pt", data)
        relative = f"{MODELS_DIR}/{trial_id}.pt"
        self.tables.set_values(trial_id, checkpoint_path=relative, checkpoint_epoch=epoch)
        return relative

    # ------------------------------------------------------------------ whole run

    def prune(self) -> int:
        """Delete the kept models the policy does not keep (e.g. after a resume with
        another ``--keep-models``, or an earlier best of a stratum); clear the index of
        models whose file is gone. Returns how many files were deleted."""
        deleted = 0
        for row in self.tables.rows():
            path = row.get("checkpoint_path")
            if not isinstance(path, str) or not path:
                continue
            file = Path(self.tables.run_dir) / path
            if not self._wanted(row) and file.is_file():
                file.unlink()
                deleted += 1
            if not file.is_file():
                if self._wanted(row):
                    self.why_missing[str(row["trial_id"])] = (
                        f"{path} is missing from the run folder (deleted or moved after the "
                        "run kept it)"
                    )
                self.tables.set_values(
                    str(row["trial_id"]), checkpoint_path=None, checkpoint_epoch=None
                )
        return deleted

    def missing_models(self) -> list[tuple[str, str]]:
        """(trial id, why) of every finished trial the policy keeps a model of whose
        model file is missing or does not load (:func:`ae4ad.load_trained`)."""
        from ae4ad.trained import TrainedModelError, load_trained

        missing = []
        for row in self.tables.rows():
            if not self._wanted(row):
                continue
            tid, path = str(row["trial_id"]), row.get("checkpoint_path")
            if not isinstance(path, str) or not path:
                why = self.why_missing.get(tid, "no model was kept for it (no reason recorded)")
                missing.append((tid, why))
                continue
            try:
                load_trained(Path(self.tables.run_dir) / path)
            except TrainedModelError as exc:
                missing.append((tid, str(exc)))
            except Exception as exc:  # noqa: BLE001 - any unloadable file: say why
                missing.append((tid, f"{path} does not load: {type(exc).__name__}: {exc}"))
        return missing

    def finalize(self, finished: bool) -> int:
        """End of a session: prune the models; when the study has finished, delete
        every Tune checkpoint left (they only serve a resume). Returns the number of
        checkpoint folders deleted."""
        self.prune()
        if not finished:
            return 0
        return delete_all_checkpoints(self.tune_storage)
