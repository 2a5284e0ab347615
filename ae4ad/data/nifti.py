"""3-D volumes (NIfTI) with segmentations, sliced into 2-D images: BraTS as distributed.

``load_dataset("nifti", root="path/to/BraTS2021_Training_Data")`` reads one folder per
subject::

    <root>/<subject>/<subject>_<modality>.nii.gz    the volume (modality: flair, t1, t1ce,
                                                   t2, ...; .nii works too)
    <root>/<subject>/<subject>_seg.nii.gz          its segmentation (optional: a subject
                                                   without one has normal slices only)

or a CSV file (``csv``) with a header ``image[,seg,subject,split]`` (paths relative to
``root`` if given, else to the CSV's folder; ``subject`` defaults to the image's file
name; rows of one subject always share a split; other columns are ignored).

Per volume (see :func:`load_nifti` for the parameters):

1. With ``reorient`` the volume (and its segmentation, voxel by voxel) is turned to the
   closest RAS orientation, so ``axis`` 2 is axial, 1 coronal, 0 sagittal. Slices are
   rotated so that anterior (axial) or superior (coronal, sagittal) is up.
2. Foreground: voxels above the volume's minimum (for skull-stripped MRI: the brain). A
   slice whose foreground share is below ``min_foreground`` is dropped.
3. Intensity: clipped at the ``percentiles`` (default 1st and 99th) of the volume's
   foreground voxels and scaled to [-1, 1]; background ends at -1.
4. A slice is abnormal when its segmentation (labels ``seg_labels``, default any
   non-zero) has at least ``min_lesion_pixels`` voxels, normal when it has none, and
   dropped when it has fewer (ambiguous). Its mask is the binarised segmentation.
5. Non-square slices are padded with background to a square, then resized to
   ``image_size`` (bilinear for images, nearest for masks).

Splits are by subject, never by slice: the sorted subjects are shuffled with ``seed``;
``round(test_fraction * n)`` (at least 1) are test subjects, ``round(val_fraction * n)``
validation subjects, the rest training subjects. Test and validation keep all their
slices (labelled); training keeps only the normal slices of training subjects. Without
validation subjects (``val_fraction`` 0, no ``val`` rows in the CSV) ``val_split`` ("auto")
holds a seeded 10 % of the training subjects (at least one) out as a normal validation
split; ``val_split: from_test`` instead moves a seeded half of the test subjects,
stratified by whether they have abnormal slices, to a labelled validation split (see
:mod:`ae4ad.data.splits`). ``info`` reports the subjects and the slice counts of every
split, how each split was made (``splits``) and what was dropped.

Example:
    >>> import tempfile, numpy as np, nibabel as nib
    >>> from pathlib import Path
    >>> from ae4ad.data import load_dataset
    >>> root = Path(tempfile.mkdtemp())
    >>> for s in range(4):
    ...     d = root / f"sub{s}"; d.mkdir()
    ...     vol = np.zeros((16, 16, 6), np.float32); vol[2:14, 2:14] = 1 + s
    ...     seg = np.zeros((16, 16, 6), np.uint8); seg[5:9, 5:9, 3:] = 1
    ...     nib.save(nib.Nifti1Image(vol, np.eye(4)), d / f"sub{s}_flair.nii.gz")
    ...     nib.save(nib.Nifti1Image(seg, np.eye(4)), d / f"sub{s}_seg.nii.gz")
    >>> ds = load_dataset("nifti", root=str(root), image_size=8, test_fraction=0.25,
    ...                   cache=False)
    >>> ds.info["n_subjects"], ds.info["n_slices"]
    ({'train': 2, 'val': 1, 'test': 1}, {'train': 6, 'val': 3, 'test': 6})
    >>> ds.info["splits"]["val"].split(";")[0]
    'from_train: 10 % of the training subjects (normal slices), drawn with seed 0'
"""

from __future__ import annotations

import csv as csv_lib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ae4ad.data import cache as cache_lib
from ae4ad.data import pixels, splits
from ae4ad.data.base import AnomalyDataset, DataError, register_source

__all__ = ["load_nifti"]

_SUFFIXES = (".nii.gz", ".nii")
_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
_SPLITS = {"train": "train", "test": "test", "val": "val", "valid": "val", "validation": "val"}


@dataclass
class _Volume:
    subject: str
    image: Path
    seg: Path | None
    split: str = ""


@dataclass
class _Found:
    """The volumes to load, the base of their relative paths, the CSV that listed them
    (None for a folder of subject folders) and the data set's name."""

    volumes: list[_Volume]
    base: Path
    csv: Path | None
    name: str


# ----------------------------------------------------------------------------- finding


def _strip(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _find(folder: Path, subject: str, tag: str) -> Path | None:
    exact = [folder / f"{subject}_{tag}{s}" for s in _SUFFIXES]
    found = [p for p in exact if p.is_file()]
    if not found:
        found = sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and _strip(p.name) != p.name and _strip(p.name).endswith(f"_{tag}")
        )
    if len(found) > 1:
        raise DataError(
            f"more than one {tag} volume for subject {subject}: " + ", ".join(str(p) for p in found)
        )
    return found[0] if found else None


def _scan_root(root: Path, modality: str) -> list[_Volume]:
    subjects = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subjects:
        raise DataError(
            f"no subject folders in {root} (expected <subject>/<subject>_{modality}.nii.gz "
            "and <subject>_seg.nii.gz, or csv=<list of volumes>)"
        )
    out = []
    for d in subjects:
        image = _find(d, d.name, modality)
        if image is None:
            raise DataError(
                f"no {modality} volume in subject folder {d}: expected "
                f"{d / f'{d.name}_{modality}.nii.gz'} (or .nii; set modality)"
            )
        out.append(_Volume(d.name, image, _find(d, d.name, "seg")))
    return out


def _read_csv(csv_path: Path, base: Path) -> list[_Volume]:
    if not csv_path.is_file():
        raise DataError(f"CSV file not found: {csv_path} (expected image[,seg,subject,split])")
    try:
        with open(csv_path, newline="") as f:
            reader = csv_lib.DictReader(f)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            if "image" not in header:
                raise DataError(
                    f"{csv_path}: expected a header row image[,seg,subject,split], found "
                    f"{','.join(reader.fieldnames or []) or 'an empty file'}"
                )
            rows = [
                (line, {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()})
                for line, row in enumerate(reader, start=2)
            ]
    except OSError as exc:
        raise DataError(f"cannot read {csv_path}: {exc}") from exc
    except (csv_lib.Error, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse {csv_path} as CSV: {exc}") from exc
    if not rows:
        raise DataError(f"{csv_path} lists no volumes")
    out = []
    for line, row in rows:
        at = f"{csv_path}, line {line}"
        if not row.get("image"):
            what = f"segmentation without its volume: {row['seg']}" if row.get("seg") else ""
            raise DataError(f"{at}: {what or 'image is empty'}")
        image = Path(row["image"]).expanduser()
        image = image if image.is_absolute() else base / image
        seg = None
        if row.get("seg"):
            seg = Path(row["seg"]).expanduser()
            seg = seg if seg.is_absolute() else base / seg
        split = row.get("split", "").lower()
        if split and split not in _SPLITS:
            raise DataError(f"{at}: split must be train, val or test, got {split!r}")
        if "split" in header and not split:
            raise DataError(f"{at}: split is empty (give every row a split, or no split column)")
        subject = row.get("subject") or _strip(image.name)
        out.append(_Volume(subject, image, seg, _SPLITS.get(split, "")))
    return out


def _find_volumes(root: str | os.PathLike | None, csv: str | None, modality: str) -> _Found:
    """The volumes listed in ``csv``, else those in the subject folders of ``root``."""
    root_path = None
    if root is not None:
        root_path = Path(root).expanduser()
        if not root_path.is_dir():
            raise DataError(f"data root {root_path} does not exist (expected a folder)")
    if csv is not None:
        csv_path = Path(csv).expanduser()
        if not csv_path.is_absolute() and root_path is not None:
            csv_path = root_path / csv_path
        base = root_path if root_path is not None else csv_path.parent
        return _Found(_read_csv(csv_path, base), base, csv_path, Path(csv).stem)
    if root_path is None:
        raise DataError("nifti: give root=<folder of subject folders> or csv=<list of volumes>")
    volumes = _scan_root(root_path, modality)
    return _Found(volumes, root_path, None, root_path.resolve().name)


def _assign_splits(
    volumes: list[_Volume], test_fraction: float, val_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Subjects of each split: from the CSV's split column, else seeded fractions."""
    subjects = sorted({v.subject for v in volumes})
    given: dict[str, str] = {}
    for v in volumes:
        if v.split:
            if given.setdefault(v.subject, v.split) != v.split:
                raise DataError(
                    f"subject {v.subject} is in the {given[v.subject]} and the {v.split} "
                    "split; all volumes of a subject must share one split"
                )
    if given:
        out = {k: sorted(s for s in subjects if given[s] == k) for k in ("train", "val", "test")}
    else:
        n = len(subjects)
        n_test = max(1, round(test_fraction * n))
        n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
        if n - n_test - n_val < 1:
            raise DataError(
                f"{n} subject(s) cannot be split into {n_test} test, {n_val} validation and at "
                "least 1 training subject; add subjects or lower test_fraction / val_fraction"
            )
        order = [subjects[int(i)] for i in np.random.default_rng(seed).permutation(n)]
        out = {
            "train": sorted(order[n_test + n_val :]),
            "val": sorted(order[n_test : n_test + n_val]),
            "test": sorted(order[:n_test]),
        }
    if not out["train"]:
        raise DataError("no training subjects (check the split column)")
    if not out["test"]:
        raise DataError("no test subjects (check the split column)")
    return out


# ----------------------------------------------------------------------------- slicing


def _load(path: Path, what: str):
    try:
        import nibabel as nib
    except ImportError as exc:  # pragma: no cover - a base dependency
        raise DataError(f"reading {path} needs nibabel: pip install nibabel") from exc
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise DataError(f"cannot read {what} {path} as NIfTI: {exc}") from exc
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{what} {path} has shape {data.shape}; expected a 3-D volume")
    return img, data


def _square(plane: np.ndarray, fill: float) -> np.ndarray:
    h, w = plane.shape
    if h == w:
        return plane
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    return np.pad(plane, ((top, s - h - top), (left, s - w - left)), constant_values=fill)


def _read_volume(vol: _Volume, p: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """The volume (float32) and its lesion mask (bool, or None without a segmentation),
    turned to RAS with ``reorient``."""
    img, data = _load(vol.image, "volume")
    data = np.asarray(data, dtype=np.float32)
    seg = None
    if vol.seg is not None:
        _, seg_data = _load(vol.seg, "segmentation")
        if seg_data.shape != data.shape:
            raise DataError(
                f"segmentation {vol.seg} has shape {seg_data.shape}; expected "
                f"{data.shape} like its volume {vol.image}"
            )
        if not np.issubdtype(seg_data.dtype, np.integer):
            seg_data = np.rint(np.asarray(seg_data, dtype=np.float32)).astype(np.int64)
        labels = p["seg_labels"]
        seg = np.isin(seg_data, labels) if labels is not None else seg_data != 0
    if p["reorient"]:
        import nibabel as nib

        ornt = nib.orientations.io_orientation(img.affine)
        data = nib.orientations.apply_orientation(data, ornt)
        if seg is not None:
            seg = nib.orientations.apply_orientation(seg, ornt)
    if not np.all(np.isfinite(data)):
        raise DataError(f"volume {vol.image} holds NaN or infinite values")
    return data, seg


def _to_unit(data: np.ndarray, fg: np.ndarray, percentiles: list[float]) -> np.ndarray:
    """Intensities clipped at the foreground's percentiles and scaled to [0, 1]."""
    if fg.any():
        lo, hi = (float(v) for v in np.percentile(data[fg], percentiles))
    else:
        lo = hi = float(data.min())
    if hi > lo:
        return np.clip((data - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)
    return fg.astype(np.float32)


def _slice_volume(vol: _Volume, role: str, p: dict) -> dict:
    """The kept slices of one volume: images float16 (n, 1, S, S) in [-1, 1], labels,
    masks, slice indices and drop counts. Training volumes keep normal slices only."""
    data, seg = _read_volume(vol, p)
    axis, size = p["axis"], p["image_size"]
    fg = data > data.min()
    unit = _to_unit(data, fg, p["percentiles"])
    unit = np.ascontiguousarray(np.moveaxis(unit, axis, 0))  # slice k = unit[k]
    if seg is not None:
        seg = np.ascontiguousarray(np.moveaxis(seg, axis, 0))
    n = data.shape[axis]
    fg_share = fg.mean(axis=tuple(a for a in range(3) if a != axis))
    lesion = np.zeros(n, dtype=np.int64) if seg is None else seg.sum(axis=(1, 2))

    images, labels, masks, index = [], [], [], []
    dropped = {"low_foreground": 0, "ambiguous": 0, "abnormal_in_train_subjects": 0}
    for k in range(n):
        if fg_share[k] < p["min_foreground"]:
            dropped["low_foreground"] += 1
            continue
        count = int(lesion[k])
        if 0 < count < p["min_lesion_pixels"]:
            dropped["ambiguous"] += 1
            continue
        label = int(count > 0)
        if role == "train" and label:
            dropped["abnormal_in_train_subjects"] += 1
            continue
        plane = _square(np.rot90(unit[k]), 0.0)
        x = pixels.resize_planes(plane[None], size)
        images.append((np.clip(x, 0.0, 1.0) * 2.0 - 1.0).astype(np.float16))
        labels.append(label)
        index.append(k)
        if seg is not None and role != "train":
            m = _square(np.rot90(seg[k]), 0)
            masks.append(pixels.resize_mask(m, size))
        elif role != "train":
            masks.append(np.zeros((1, size, size), np.uint8))
    return {
        "images": np.stack(images) if images else np.zeros((0, 1, size, size), np.float16),
        "labels": labels,
        "masks": masks,
        "index": index,
        "n_slices": n,
        "dropped": dropped,
    }


def _build(volumes: list[_Volume], roles: list[str], p: dict) -> dict[str, np.ndarray]:
    results = pixels.map_files(
        lambda vr: _slice_volume(vr[0], vr[1], p), list(zip(volumes, roles)), limit=4
    )
    size = p["image_size"]
    out: dict[str, np.ndarray] = {}
    info: dict = {
        "n_slices": {},
        "n_slices_abnormal": {"val": 0, "test": 0},
        "slices_per_subject": {},
        "dropped": {"low_foreground": 0, "ambiguous": 0, "abnormal_in_train_subjects": 0},
        "slice_ids": {},
        "row_subjects": {},
    }
    for split in ("train", "val", "test"):
        parts = [(v, r) for v, r in zip(volumes, results) if v.split == split]
        if not parts:
            info["n_slices"][split] = 0
            continue
        x = np.concatenate([r["images"] for _, r in parts])
        labels = [lab for _, r in parts for lab in r["labels"]]
        info["n_slices"][split] = len(x)
        for v, r in parts:
            n_kept = len(r["labels"])
            key = v.subject
            info["slices_per_subject"][key] = info["slices_per_subject"].get(key, 0) + n_kept
            for reason, c in r["dropped"].items():
                info["dropped"][reason] += c
        if len(x) == 0:
            continue
        out[split] = x
        info["slice_ids"][split] = [
            f"{v.subject}:{_strip(v.image.name)}:{k}" for v, r in parts for k in r["index"]
        ]
        info["row_subjects"][split] = [v.subject for v, r in parts for _ in r["index"]]
        if split != "train":
            out[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)
            out[f"{split}_masks"] = np.stack([m for _, r in parts for m in r["masks"]]).reshape(
                len(x), 1, size, size
            )
            info["n_slices_abnormal"][split] = int(sum(labels))
    out["info_json"] = np.asarray(json.dumps(info))
    return out


# ----------------------------------------------------------------------------- validation


def _given_val(subjects: dict[str, list[str]], csv: Path | None, val_fraction: float) -> str | None:
    """Where the data's own validation subjects come from, or None without any."""
    n = len(subjects["val"])
    if not n:
        return None
    by = f"the split column of {csv.name}" if csv is not None else f"val_fraction {val_fraction:g}"
    return f"{n} validation subject{'s' if n > 1 else ''} from {by}"


def _val_subjects(
    arrays: dict[str, np.ndarray],
    row_subjects: np.ndarray,
    src: str,
    mode: str,
    ratio: float,
    seed: int,
) -> list[str]:
    """The subjects drawn for validation from split ``src``: a share of those with slices
    (``from_train``), or of the test subjects stratified by whether they have abnormal
    slices (``from_test``)."""
    units = sorted(set(row_subjects.tolist()))
    rng = splits.val_rng(seed)
    if mode == "from_train":
        if len(units) < 2:
            raise DataError(
                f"val_split from_train needs at least 2 training subjects with normal slices, "
                f"found {len(units)} (add subjects or use val_split: none)"
            )
        return [units[int(i)] for i in splits.pick_share(len(units), ratio, rng)]
    labels = arrays["test_labels"]
    with_lesion = [int(labels[row_subjects == u].max()) for u in units]
    strata = ["lesion" if x else "no lesion" for x in with_lesion]
    try:
        picked = splits.stratified_pick(with_lesion, strata, ratio, rng, need=(1,))
    except DataError:
        raise DataError(
            f"val_split from_test needs at least 2 test subjects with abnormal slices, found "
            f"{sum(with_lesion)} (raise test_fraction, add subjects or use val_split: "
            "from_train)"
        ) from None
    return [units[int(i)] for i in picked]


def _carve_val(
    arrays: dict[str, np.ndarray], info: dict, mode: str, ratio: float | None, seed: int
) -> dict[str, np.ndarray]:
    """``arrays`` with validation subjects drawn from the training subjects (normal
    slices, ``from_train``) or the test subjects (all slices, labelled, ``from_test``);
    ``info`` (subjects, slice counts and ids) follows. ``none`` drops a validation split."""
    if mode == "none":
        info["subjects"]["val"], info["n_slices"]["val"] = [], 0
        return {k: v for k, v in arrays.items() if not k.startswith("val")}
    if mode not in ("from_train", "from_test") or ratio is None:
        return arrays
    src = "train" if mode == "from_train" else "test"
    row_subjects = np.asarray(info["row_subjects"][src], dtype=object)
    chosen = _val_subjects(arrays, row_subjects, src, mode, ratio, seed)
    is_val = np.isin(row_subjects, chosen)
    out = dict(arrays)
    for suffix in ("", "_labels", "_masks"):
        if src + suffix in arrays:
            out["val" + suffix] = arrays[src + suffix][is_val]
            out[src + suffix] = arrays[src + suffix][~is_val]
    if mode == "from_train":
        out["val_labels"] = np.zeros(int(is_val.sum()), dtype=np.int64)
    else:
        for split in ("val", "test"):
            n1 = int(out[f"{split}_labels"].sum())
            if n1 == len(out[split]):
                raise DataError(
                    f"val_split from_test: the {split} subjects have no normal slice; "
                    "change seed or val_split_ratio, or use val_split: from_train"
                )
            info["n_slices_abnormal"][split] = n1
    for key in ("slice_ids", "row_subjects"):
        items = np.asarray(info[key][src], dtype=object)
        info[key]["val"], info[key][src] = items[is_val].tolist(), items[~is_val].tolist()
    info["n_slices"]["val"], info["n_slices"][src] = len(out["val"]), len(out[src])
    info["subjects"]["val"] = sorted(chosen)
    info["subjects"][src] = sorted(set(info["subjects"][src]) - set(chosen))
    return out


def _with_validation(
    arrays: dict[str, np.ndarray],
    subjects: dict[str, list[str]],
    auto: bool,
    mode: str,
    ratio: float | None,
    seed: int,
    given: str | None,
) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays with the validation split ``mode`` made, and the data set's ``info``
    (the cached facts, the subjects of every split, ``val_split``, its ratio and how
    each split was made)."""
    info = json.loads(str(arrays["info_json"]))
    info["subjects"] = {k: list(v) for k, v in subjects.items()}
    n_train_subjects = len(set(info["row_subjects"].get("train", [])))
    if mode == "from_train" and auto and n_train_subjects < 2:
        mode = "none: only 1 training subject, none to spare for validation"
    arrays = _carve_val(arrays, info, mode, ratio, seed)
    info["val_split"] = mode.split(":")[0]
    info["val_split_ratio"] = ratio if mode in ("from_train", "from_test") else None
    info["splits"] = _split_notes(mode, ratio, seed, given)
    return arrays, info


def _split_notes(mode: str, ratio: float | None, seed: int, given: str | None) -> dict[str, str]:
    """How each split was made, one phrase each (counts are added by describe_splits)."""
    train = f"normal slices of the training subjects (subjects shuffled with seed {seed})"
    test = "all slices of the test subjects, labelled"
    pct = f"{100 * ratio:g} %" if ratio is not None else ""
    if mode == "from_train":
        val = (
            f"from_train: {pct} of the training subjects (normal slices), drawn with seed "
            f"{seed}; subject-disjoint from training and test"
        )
    elif mode == "from_test":
        val = (
            f"from_test: {pct} of the test subjects (all slices, labelled), stratified by "
            f"whether a subject has abnormal slices, drawn with seed {seed}; "
            "subject-disjoint from the remaining test subjects"
        )
        test = "all slices of the remaining test subjects, labelled"
    elif mode == "given":
        val = f"given: all slices of {given}, labelled"
    else:
        val = mode if ":" in mode else "none (val_split: none)"
    return {"train": train, "val": val, "test": test}


# ----------------------------------------------------------------------------- loading


def _check_axis(axis: int | str) -> int:
    if isinstance(axis, str):
        if axis.lower() not in _AXES:
            raise DataError(f"axis must be 0, 1, 2 or {', '.join(_AXES)}, got {axis!r}")
        axis = _AXES[axis.lower()]
    if isinstance(axis, bool) or axis not in (0, 1, 2):
        raise DataError(f"axis must be 0, 1, 2 or {', '.join(_AXES)}, got {axis!r}")
    return axis


def _check_fraction(name: str, value, low_open: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not ((0.0 < value) if low_open else (0.0 <= value)) or value >= 1.0:
        raise DataError(f"{name} must be in {'(0' if low_open else '[0'}, 1), got {value!r}")
    return float(value)


def _check_fractions(test_fraction, val_fraction) -> tuple[float, float]:
    test_fraction = _check_fraction("test_fraction", test_fraction, True)
    val_fraction = _check_fraction("val_fraction", val_fraction, False)
    if test_fraction + val_fraction >= 1.0:
        raise DataError(
            f"test_fraction + val_fraction must be below 1, got {test_fraction + val_fraction}"
        )
    return test_fraction, val_fraction


def _slicing_params(
    image_size: int,
    axis: int,
    reorient,
    min_foreground,
    min_lesion_pixels: int,
    seg_labels,
    percentiles,
) -> dict:
    """The parameters of :func:`_slice_volume`, with the last ones checked."""
    if (
        isinstance(min_foreground, bool)
        or not isinstance(min_foreground, (int, float))
        or not (0.0 <= min_foreground <= 1.0)
    ):
        raise DataError(f"min_foreground must be in [0, 1], got {min_foreground!r}")
    percentiles = pixels.check_percentiles(percentiles)
    if seg_labels is not None:
        values = [seg_labels] if isinstance(seg_labels, int) else list(seg_labels)
        if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise DataError(f"seg_labels must be integers (or None for any), got {seg_labels!r}")
        seg_labels = sorted(set(values))
    return {
        "image_size": image_size,
        "axis": axis,
        "reorient": bool(reorient),
        "min_foreground": float(min_foreground),
        "min_lesion_pixels": min_lesion_pixels,
        "seg_labels": seg_labels,
        "percentiles": list(percentiles),
    }


def _cached_slices(
    found: _Found,
    subjects: dict[str, list[str]],
    p: dict,
    cache: bool,
    cache_dir: str | os.PathLike | None,
) -> tuple[dict[str, np.ndarray], str, Path | None]:
    """The slices of every volume, split by subject (see :func:`cache.cached_arrays`)."""
    role = {s: split for split, names in subjects.items() for s in names}
    volumes = found.volumes
    for v in volumes:
        v.split = role[v.subject]
    volumes.sort(key=lambda v: (v.subject, str(v.image)))
    roles = [v.split for v in volumes]
    files = [] if found.csv is None else [found.csv]
    files += [v.image for v in volumes] + [v.seg for v in volumes if v.seg is not None]
    params = {
        **p,
        "layout": 2,  # the cached info holds row_subjects and the training slice_ids
        "base": str(found.base.resolve()),
        "volumes": [[v.subject, str(v.image), str(v.seg), v.split] for v in volumes],
    }
    key = cache_lib.cache_key("nifti", params, cache_lib.file_fingerprint(files, found.base))
    if cache_dir is None:
        cache_dir = cache_lib.default_cache_dir(found.base)
    return cache_lib.cached_arrays(
        key,
        lambda: _build(volumes, roles, p),
        cache_dir=cache_dir,
        prefix=f"nifti-{p['image_size']}",
        use_cache=cache,
    )


def _require_slices(arrays: dict[str, np.ndarray], subjects: dict[str, list[str]]) -> None:
    """Normal training slices and abnormal test slices must be left after slicing."""
    if "train" not in arrays:
        raise DataError(
            f"no normal slices in the training subjects ({', '.join(subjects['train'][:5])}"
            f"{', ...' if len(subjects['train']) > 5 else ''}); lower min_foreground or "
            "check the segmentations"
        )
    if "test" not in arrays or not int(arrays["test_labels"].sum()):
        raise DataError(
            f"no abnormal slices in the test subjects ({', '.join(subjects['test'][:5])}"
            f"{', ...' if len(subjects['test']) > 5 else ''}); check the segmentations and "
            "min_lesion_pixels, or change seed / test_fraction"
        )


@register_source("nifti")
def load_nifti(
    root: str | os.PathLike | None = None,
    csv: str | None = None,
    modality: str = "flair",
    image_size: int = 64,
    axis: int | str = 2,
    reorient: bool = True,
    min_foreground: float = 0.1,
    min_lesion_pixels: int = 10,
    seg_labels: Sequence[int] | int | None = None,
    percentiles: Sequence[float] = (1.0, 99.0),
    test_fraction: float = 0.3,
    val_fraction: float = 0.0,
    val_split: str = "auto",
    val_split_ratio: float | None = None,
    seed: int = 0,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> AnomalyDataset:
    """Load NIfTI volumes as 2-D slices (see the module docstring for layout and rules).

    Args:
        root: folder of subject folders (``<subject>/<subject>_<modality>.nii.gz`` and
            ``<subject>_seg.nii.gz``); with ``csv``, the base of relative paths.
        csv: a CSV file with a header ``image[,seg,subject,split]`` instead of folders.
        modality: file tag of the volume to read (flair, t1, t1ce, t2, ...).
        image_size: side S of the square slices.
        axis: slicing axis (0, 1, 2 or sagittal, coronal, axial; 2 = axial after
            ``reorient``).
        reorient: turn volumes to the closest RAS orientation before slicing.
        min_foreground: drop slices whose share of foreground voxels is below this.
        min_lesion_pixels: segmentation voxels that make a slice abnormal; slices with
            fewer but some are dropped.
        seg_labels: segmentation labels that count as lesion (default: any non-zero).
        percentiles: (low, high) percentiles of the foreground voxels clipped to -1 / 1.
        test_fraction / val_fraction: shares of subjects for test / validation (labelled).
        val_split: ``"auto"`` (the validation subjects of ``val_fraction`` or the CSV when
            there are any, else ``"from_train"``), ``"from_train"`` (a share of the
            training subjects, normal slices), ``"from_test"`` (a share of the test
            subjects, all slices, labelled) or ``"none"`` (see :mod:`ae4ad.data.splits`).
        val_split_ratio: share of subjects drawn for validation; default 0.1 of the
            training subjects (``from_train``) or 0.5 of the test subjects (``from_test``).
        seed: seed of the subject shuffle and of the validation draw.
        cache: read/write the slices in ``cache_dir`` and memoise them in-process.
        cache_dir: default ``AE4AD_CACHE`` or ``<root>/.ae4ad_cache`` (the CSV's folder
            without ``root``).
    """
    image_size = pixels.check_int("image_size", image_size, 1)
    seed = pixels.check_int("seed", seed, 0)
    min_lesion_pixels = pixels.check_int("min_lesion_pixels", min_lesion_pixels, 1)
    axis = _check_axis(axis)
    test_fraction, val_fraction = _check_fractions(test_fraction, val_fraction)
    p = _slicing_params(
        image_size, axis, reorient, min_foreground, min_lesion_pixels, seg_labels, percentiles
    )
    if not isinstance(modality, str) or not modality:
        raise DataError(f"modality must be a file tag such as flair, got {modality!r}")

    val_split, val_split_ratio = splits.check_val_split(val_split, val_split_ratio)
    if val_split == "none" and val_fraction > 0:
        raise DataError("val_fraction asks for validation subjects but val_split is none")

    found = _find_volumes(root, csv, modality)
    subjects = _assign_splits(found.volumes, test_fraction, val_fraction, seed)
    given = _given_val(subjects, found.csv, val_fraction)
    mode, ratio = splits.resolve_val_split(val_split, val_split_ratio, given)
    arrays, where, cache_file = _cached_slices(found, subjects, p, cache, cache_dir)
    _require_slices(arrays, subjects)
    arrays, info = _with_validation(arrays, subjects, val_split == "auto", mode, ratio, seed, given)
    n_sub = {k: len(v) for k, v in info["subjects"].items()}
    return AnomalyDataset(
        name=found.name or "nifti",
        description=(
            f"NIfTI {modality} slices from {found.base}: subjects {n_sub['train']} train / "
            f"{n_sub['val']} val / {n_sub['test']} test, axis {axis}, {image_size} px"
        ),
        **cache_lib.split_tensors(arrays, masks=any(v.seg is not None for v in found.volumes)),
        info={
            "source": "nifti",
            "root": str(found.base),
            "csv": None if found.csv is None else str(found.csv),
            "modality": modality,
            "axis": axis,
            "n_subjects": n_sub,
            "n_subjects_without_seg": sum(v.seg is None for v in found.volumes),
            **info,
            "seed": seed,
            "cache": where,
            "cache_file": None if cache_file is None else str(cache_file),
        },
    )
