"""Score new images with the models a study kept (``ae4ad-study predict``).

``predict(run_dir, "best", ["scans/"], "out/")`` loads the kept model of the run's
best trial (``<run>/models/<trial_id>.pt``, weights only), prepares every image as the
trial's data set did (channels, size, range: :class:`ae4ad.trained.Preprocessing`),
scores it exactly as the run's evaluation did, and writes:

- ``out/scores.csv``: one row per image and trial (``file``, ``trial_id``, ``score``,
  and ``label`` when labels are given);
- ``out/maps/<trial_id>/<file>.png``: the image beside its anomaly map drawn as a heat
  map over it, on one colour scale for all images of the trial (0 to the 99.5th
  percentile of their map values, ``vmax`` in ``out/predict.json``);
- ``out/predict.json``: which models scored what, and AUC / AP with labels.

Trials: ``best`` (the best completed trial of the run by its objective, e.g. the
highest ``auc``), ``best-per-stratum`` (one per data set x model), or a trial id.
``export_split`` writes a run's own data set split as files (``.npy``: lossless), so
that scoring them reproduces the run's scores and AUC.

Bad input raises :class:`PredictError` (a one-line message naming the file): an
unreadable image, a wrong channel count, an unknown trial, a trial without a kept
model, labels that do not cover the images.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

__all__ = ["PredictError", "PredictResult", "export_split", "predict", "resolve_trials"]

TRIAL_CHOICES = ("best", "best-per-stratum")
LABELS_FROM_FOLDERS = "from-folders"
NORMAL_FOLDERS = ("normal", "good", "0", "healthy", "negative")
ABNORMAL_FOLDERS = ("abnormal", "anomaly", "anomalous", "ungood", "bad", "1", "tumor", "lesion")


class PredictError(ValueError):
    """Input that cannot be scored: the message names the file, trial or run."""


@dataclass
class PredictResult:
    """What :func:`predict` did: per trial, the files scored and the metrics."""

    out_dir: Path
    trials: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _space(run_dir: Path) -> dict:
    path = run_dir / "space.yaml"
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError):
        return {}


def _objective(run_dir: Path) -> tuple[str, str]:
    scheduler = _space(run_dir).get("scheduler") or {}
    metric = str(scheduler.get("metric") or "auc")
    mode = str(scheduler.get("mode") or "max")
    return metric, mode


def _trials(run_dir: Path):
    from study.results import read_trials

    if not run_dir.is_dir():
        raise PredictError(f"{run_dir}: no such run folder")
    try:
        trials = read_trials(run_dir)
    except (OSError, ValueError) as exc:
        raise PredictError(f"{run_dir}: cannot read trials.parquet ({exc})") from None
    if trials is None or trials.empty:
        raise PredictError(f"{run_dir}: not a run folder with results (no trials.parquet)")
    return trials


def resolve_trials(run_dir: str | os.PathLike, which: str) -> list[dict[str, Any]]:
    """The trial rows ``which`` names (``best``, ``best-per-stratum`` or a trial id),
    each with a kept model; raises :class:`PredictError` otherwise."""
    run_dir = Path(run_dir)
    trials = _trials(run_dir)
    rows = trials.to_dict("records")
    if which in TRIAL_CHOICES:
        metric, mode = _objective(run_dir)
        best: dict[Any, dict] = {}
        for row in rows:
            value = row.get(metric)
            if row.get("status") != "completed" or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(float(value)):
                continue
            key = row.get("stratum") if which == "best-per-stratum" else None
            old = best.get(key)
            if old is None or (value > old[metric] if mode == "max" else value < old[metric]):
                best[key] = row
        if not best:
            raise PredictError(f"{run_dir}: no completed trial with a finite {metric}")
        chosen = list(best.values())
    else:
        chosen = [r for r in rows if str(r.get("trial_id")) == which]
        if not chosen:
            ids = [str(r.get("trial_id")) for r in rows]
            near = [i for i in ids if i.startswith(which)] or ids
            shown = ", ".join(near[:5]) + (", ..." if len(near) > 5 else "")
            raise PredictError(f"{run_dir}: no trial {which!r} (trials: {shown})")
    for row in chosen:
        path = row.get("checkpoint_path")
        if not isinstance(path, str) or not (run_dir / path).is_file():
            raise PredictError(
                f"{run_dir}: trial {row.get('trial_id')} has no kept model (models/"
                f"{row.get('trial_id')}.pt): {_why_no_model(run_dir, row)}"
            )
    return chosen


def _why_no_model(run_dir: Path, row: dict[str, Any]) -> str:
    """Why the run folder holds no model of the trial ``row``: the file gone, the
    trial's status, or the ``--keep-models`` of the run's last session."""
    from study.checkpoints import KEPT_STATUSES
    from study.results import read_meta

    path = row.get("checkpoint_path")
    if isinstance(path, str) and path:
        return f"{path} is missing from the run folder (deleted or moved after the run kept it)"
    status = row.get("status")
    if status not in KEPT_STATUSES:
        return f"it ended {status}; a run keeps models of {' and '.join(KEPT_STATUSES)} trials only"
    sessions = read_meta(run_dir).get("sessions") or [{}]
    policy = sessions[-1].get("keep_models")
    if policy == "none":
        return "the run's --keep-models none keeps no model"
    if policy == "best":
        return "the run's --keep-models best keeps the best trial of each stratum only"
    if policy == "all":
        return (
            "the run folder holds none although --keep-models all keeps every completed "
            "trial's model (the run's end names the cause in a warning line)"
        )
    return "the run recorded no --keep-models (it keeps models from --keep-models best/all)"


def _read_labels(spec: str, files: Sequence[Path], roots: Sequence[Path]) -> np.ndarray:
    """Labels of ``files`` from a CSV (columns file + label) or from folder names."""
    if spec == LABELS_FROM_FOLDERS:
        labels = []
        for f in files:
            name = f.parent.name.lower()
            if name in NORMAL_FOLDERS:
                labels.append(0)
            elif name in ABNORMAL_FOLDERS:
                labels.append(1)
            else:
                raise PredictError(
                    f"{f}: its folder {f.parent.name!r} is neither normal "
                    f"({'/'.join(NORMAL_FOLDERS)}) nor abnormal ({'/'.join(ABNORMAL_FOLDERS)})"
                )
        return np.asarray(labels, dtype=np.int64)
    path = Path(spec)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            table = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PredictError(f"{path}: cannot read the labels ({exc})") from None
    if not table:
        raise PredictError(f"{path}: no rows")
    columns = {c.lower(): c for c in table[0]}
    file_col = next((columns[c] for c in ("file", "path", "image", "name") if c in columns), None)
    label_col = next((columns[c] for c in ("label", "anomaly", "target") if c in columns), None)
    if file_col is None or label_col is None:
        raise PredictError(f"{path}: expected columns file and label, got {', '.join(table[0])}")
    by_name: dict[str, int] = {}
    for i, row in enumerate(table, start=2):
        try:
            value = int(float(row[label_col]))
        except (TypeError, ValueError):
            value = -1
        if value not in (0, 1):
            raise PredictError(f"{path}: line {i}: label must be 0 or 1, got {row[label_col]!r}")
        by_name[str(row[file_col]).replace("\\", "/").strip()] = value
    labels = []
    for f in files:
        keys = [str(f), f.name, f.stem]
        for root in roots:
            if root.is_dir() and f.is_relative_to(root):
                keys.insert(0, f.relative_to(root).as_posix())
        hit = next((by_name[k] for k in keys if k in by_name), None)
        if hit is None:
            raise PredictError(f"{f}: no label for it in {path}")
        labels.append(hit)
    return np.asarray(labels, dtype=np.int64)


def _map_name(file: Path, roots: Sequence[Path]) -> str:
    for root in roots:
        if root.is_dir() and file.is_relative_to(root):
            rel = file.relative_to(root).with_suffix("")
            return "__".join(rel.parts) + ".png"
    return file.stem + ".png"


def predict(
    run_dir: str | os.PathLike,
    trial: str,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    labels: str | None = None,
    maps: bool = True,
    device: str = "cpu",
) -> PredictResult:
    """Score ``inputs`` (files and folders) with the kept model(s) of ``trial`` in
    ``run_dir``; writes scores.csv, maps/ and predict.json under ``out_dir``. ``device``:
    cpu, cuda, cuda:<index> or auto (a GPU when PyTorch sees one), checked first."""
    from ae4ad.data import DataError
    from ae4ad.device import resolve_device
    from ae4ad.scoring import image_metrics
    from ae4ad.train import ConfigError
    from ae4ad.trained import TrainedModelError, list_inputs, load_trained

    try:
        device = str(resolve_device(device))
    except ConfigError as exc:
        raise PredictError(f"--{exc}") from None
    run_dir = Path(run_dir)
    rows = resolve_trials(run_dir, trial)
    roots = [Path(p) for p in inputs]
    try:
        files = list_inputs(roots)
    except DataError as exc:
        raise PredictError(str(exc)) from None
    if not files:
        raise PredictError(
            f"{', '.join(str(r) for r in roots)}: no images (.png, .jpg, .bmp, .tif, .npy) found"
        )
    y = _read_labels(labels, files, roots) if labels else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = PredictResult(out_dir=out, files=files)
    csv_rows = []
    for row in rows:
        tid = str(row["trial_id"])
        try:
            trained = load_trained(run_dir, tid, device=device)
            images = trained.preprocessing(files)
        except (DataError, TrainedModelError) as exc:
            raise PredictError(str(exc)) from None
        scored = trained.score(images, keep_maps=maps)
        scores = scored["scores"]
        info: dict[str, Any] = {
            "trial_id": tid,
            "stratum": row.get("stratum"),
            "model_file": str(trained.path),
            "epoch": trained.epoch,
            "score": trained.score_name,
            "image_size": trained.preprocessing.image_size,
            "in_channels": trained.preprocessing.in_channels,
            "n_images": len(files),
            "run_auc": _plain(row.get("auc")),
        }
        if y is not None:
            if len(set(y.tolist())) < 2:
                info.update(auc=None, ap=None)
            else:
                info.update({k: float(v) for k, v in image_metrics(scores, y).items()})
            info["n_normal"], info["n_abnormal"] = int((y == 0).sum()), int((y == 1).sum())
        if maps:
            info["vmax"], info["maps"] = _write_maps(
                out / "maps" / tid,
                files,
                roots,
                images.numpy(),
                scored["maps"],
                trained.preprocessing.image_size,
            )
        for i, f in enumerate(files):
            entry = {"file": str(f), "trial_id": tid, "score": float(scores[i])}
            if y is not None:
                entry["label"] = int(y[i])
            csv_rows.append(entry)
        result.trials.append(info)
    _write_results(out, run_dir, result.trials, csv_rows)
    return result


def _write_maps(
    folder: Path,
    files: Sequence[Path],
    roots: Sequence[Path],
    images: np.ndarray,
    amaps: np.ndarray,
    image_size: int,
) -> tuple[float, str]:
    """An overlay of each image's anomaly map under ``folder``, all on one colour scale
    (the maps' 99.5th percentile); returns that scale's top and the folder."""
    from ae4ad.trained import overlay

    vmax = float(np.percentile(amaps, 99.5)) if amaps.size else 1.0
    folder.mkdir(parents=True, exist_ok=True)
    scale = max(1, 256 // max(1, image_size))
    for f, image, amap in zip(files, images, amaps):
        overlay(image, amap, vmax, scale=scale).save(folder / _map_name(f, roots))
    return vmax, str(folder)


def _write_results(out: Path, run_dir: Path, trials: list[dict], csv_rows: list[dict]) -> None:
    """scores.csv (one row per image and trial) and predict.json (one entry per trial)."""
    with open(out / "scores.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(csv_rows[0]))
        writer.writeheader()
        for entry in csv_rows:
            writer.writerow({**entry, "score": repr(entry["score"])})
    (out / "predict.json").write_text(
        json.dumps({"run": str(run_dir), "trials": trials}, indent=2), encoding="utf-8"
    )


def _plain(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    return value


def export_split(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    split: str = "test",
    fmt: str = "npy",
    dataset: str | None = None,
) -> list[Path]:
    """Write a split of a run's data set (rebuilt from its space.yaml) as files plus
    labels.csv; ``dataset`` is the data set label when the run has several."""
    import ae4ad
    from ae4ad.data import DataError
    from ae4ad.trained import export_images

    run_dir = Path(run_dir)
    specs = _space(run_dir).get("datasets") or []
    if not specs:
        raise PredictError(f"{run_dir}: no space.yaml with data sets (not a run folder?)")
    labels = [str(d.get("label") or d.get("name")) for d in specs]
    if dataset is None and len(specs) > 1:
        raise PredictError(
            f"{run_dir}: several data sets; choose one with --dataset ({', '.join(labels)})"
        )
    spec = (
        specs[0]
        if dataset is None
        else next((d for d, label in zip(specs, labels) if label == dataset), None)
    )
    if spec is None:
        raise PredictError(f"{run_dir}: no data set {dataset!r} (data sets: {', '.join(labels)})")
    try:
        data = ae4ad.load_dataset(spec["name"], **(spec.get("params") or {}))
        return export_images(data, out_dir, split=split, fmt=fmt)
    except (DataError, TypeError, OSError) as exc:
        raise PredictError(" ".join(str(exc).split())) from None
