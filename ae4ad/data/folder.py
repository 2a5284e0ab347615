"""Your own images: an MVTec-AD-style folder, explicit folders, or a CSV list.

``load_dataset("folder", root="path/to/data")`` reads the layout that anomaly-detection
tools standardised on (MVTec AD; anomalib's "Folder" data set)::

    <root>/train/good/                   normal training images
    <root>/test/good/                    normal test images (optional, see hold-out)
    <root>/test/<defect>/                abnormal test images, one folder per kind
    <root>/ground_truth/<defect>/<name>_mask.png   mask of test/<defect>/<name>.* (optional;
                                         <name>.* without "_mask" is accepted too)
    <root>/validation/good/ or val/good/ normal validation images (optional)

Every folder can be given instead (``normal_dir``, ``normal_test_dir``, ``abnormal_dirs``,
``mask_dir``, ``val_dir``; relative paths are taken from ``root``), or a CSV file with a
header row ``path,label[,mask,split]`` lists the images (``csv``; see below).
Folders are searched recursively; hidden files and folders are skipped. Images may be
PNG, JPEG, BMP, TIFF (8 or 16 bit) or DICOM (see :mod:`ae4ad.data.pixels`).

Hold-out: when there is no normal test image, a seeded share ``holdout_fraction`` of the
normal training images (at least one, rounded) becomes the normal test images and is
removed from training; ``info["held_out"]`` lists them.

Validation (``val_split``, see :mod:`ae4ad.data.splits`): by default (``"auto"``) the given
validation images (``val_dir``, ``validation/good``, ``val/good``, CSV rows with split
``val``), else a seeded 10 % (``val_split_ratio``) of the normal training images, held out
of training (``"from_train"``). ``"from_test"`` instead moves a seeded, stratified share
(default 50 %) of the test images, normal and abnormal, to a labelled validation split, so
``val_auc`` and ``val_ap`` exist; ``"none"`` makes no validation split.
``info["splits"]`` says how each split was made.

Checks (each a :class:`DataError` naming the file): an empty or missing folder, no
abnormal test image, an abnormal image without a mask when there is a mask folder, a
mask without its image, an image that cannot be decoded, a DICOM file without pixel
data, and a file that is in two splits.

Parameters of :func:`load_folder`:

- ``root``: the data folder (MVTec-style layout by default); relative folder params and
  CSV paths are taken from it.
- ``normal_dir``: normal training images (default ``train/good``).
- ``abnormal_dirs``: folders of abnormal test images, one per defect kind (default:
  every folder in ``test/`` except ``test/good`` and ``normal_test_dir``).
- ``normal_test_dir``: normal test images (default ``test/good`` when present).
- ``mask_dir``: masks (default ``ground_truth`` when present); the mask of
  ``<defect>/<name>.*`` is ``<mask_dir>/<defect>/<name>_mask.*`` or ``<name>.*``, with or
  without the ``<defect>/`` folder.
- ``val_dir``: normal validation images (default ``validation/good`` or ``val/good``).
- ``csv``: instead of folders, a CSV file with a header ``path,label[,mask,split]``:
  label 0/1 (or normal/abnormal), mask a path (empty for none), split train/val/test
  (empty: train for label 0, test for label 1). Paths are relative to ``root`` if given,
  else to the CSV's folder. Other columns are ignored.
- ``image_size``: side S; images are resized bilinearly, masks with nearest neighbour.
- ``rgb``: 3 channels (gray images repeated); otherwise colour becomes gray (luma).
- ``normalize``: ``"auto"`` ("fixed" for 8-bit files, "percentile" for 16-bit, float and
  DICOM files), ``"minmax"`` (each image's min -> -1, max -> 1), ``"percentile"`` (each
  image clipped at ``percentiles`` first) or ``"fixed"`` (``value_range``, default the
  file type's range: 0..255 for 8-bit, 0..65535 for 16-bit).
- ``percentiles``: (low, high) percentiles for ``"percentile"``.
- ``value_range``: (low, high) values mapped to -1 and 1 for ``"fixed"``.
- ``window``: DICOM-style (center, width): values in ``center -+ width/2`` map to [-1, 1],
  clipped; replaces ``normalize``. DICOM values are taken after the modality LUT
  (rescale slope and intercept), e.g. Hounsfield units.
- ``val_split``: ``"auto"`` (default), ``"from_train"``, ``"from_test"`` or ``"none"``
  (above).
- ``val_split_ratio``: the share drawn for validation; default 0.1 of the normal training
  images (``from_train``) or 0.5 of the test images (``from_test``), at least one image,
  never all.
- ``holdout_fraction``: when there is no normal test image, this share of the normal
  training images (seeded by ``seed``) becomes the normal test images.
- ``seed``: seed of the hold-out and validation draws.
- ``cache``: read/write the resized arrays in ``cache_dir`` and memoise them in-process.
- ``cache_dir``: default ``AE4AD_CACHE`` or ``<root>/.ae4ad_cache`` (the CSV's folder, or
  the normal folder's parent, without ``root``).

Example:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from ae4ad.data import load_dataset
    >>> root = Path(tempfile.mkdtemp())
    >>> for split, n in (("train/good", 5), ("test/good", 2), ("test/crack", 2)):
    ...     (root / split).mkdir(parents=True)
    ...     for i in range(n):
    ...         a = np.zeros((16, 16), np.uint8); a[:, i:] = 200
    ...         Image.fromarray(a).save(root / split / f"{i}.png")
    >>> ds = load_dataset("folder", root=str(root), image_size=8, cache=False)
    >>> len(ds.train), len(ds.val), ds.test_labels.tolist(), ds.info["test_groups"]
    (4, 1, [0, 0, 1, 1], ['good', 'good', 'crack', 'crack'])
    >>> ds = load_dataset("folder", root=str(root), image_size=8, cache=False,
    ...                   val_split="from_test")
    >>> len(ds.train), ds.val_labels.tolist(), ds.test_labels.tolist()
    (5, [0, 1], [0, 1])
"""

from __future__ import annotations

import csv as csv_lib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ae4ad.data import cache as cache_lib
from ae4ad.data import pixels, splits
from ae4ad.data.base import AnomalyDataset, DataError, register_source

__all__ = ["load_folder"]

_LABELS = {"0": 0, "1": 1, "normal": 0, "good": 0, "abnormal": 1, "anomaly": 1, "bad": 1}
_SPLITS = {"train": "train", "test": "test", "val": "val", "valid": "val", "validation": "val"}
_CSV_COLUMNS = ("path", "label", "mask", "split")


@dataclass
class _Split:
    """Files of one split: images, labels, masks (None: no mask) and group names."""

    images: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    masks: list[Path | None] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def add(self, path: Path, label: int, mask: Path | None = None, group: str = "") -> None:
        self.images.append(path)
        self.labels.append(label)
        self.masks.append(mask)
        self.groups.append(group)


@dataclass
class _Plan:
    splits: dict[str, _Split]
    base: Path
    meta_files: list[Path] = field(default_factory=list)
    has_masks: bool = False
    held_out: list[Path] = field(default_factory=list)


# ----------------------------------------------------------------------------- helpers


def _resolve(path: str | os.PathLike, root: Path | None) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute() and root is not None:
        p = root / p
    return p


def _images_in(folder: Path, what: str, param: str) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder} (expected {what}; set {param})")
    found = pixels.list_image_files(folder)
    if not found:
        raise DataError(f"no images in {folder} (expected {what} as {pixels.KINDS} files)")
    return found


def _key(path: Path) -> str:
    """Relative path without suffix and without a trailing ``_mask``, "/"-separated."""
    stem = path.with_suffix("").as_posix()
    return stem[: -len("_mask")] if stem.endswith("_mask") else stem


def _mask_index(mask_dir: Path) -> dict[str, list[Path]]:
    index: dict[str, list[Path]] = {}
    for m in pixels.list_image_files(mask_dir):
        index.setdefault(_key(m.relative_to(mask_dir)), []).append(m)
    return index


def _find_mask(
    image: Path, folder: Path, index: dict[str, list[Path]], mask_dir: Path
) -> tuple[Path, str]:
    """The mask of ``image`` (in abnormal folder ``folder``): ``<mask_dir>/<folder
    name>/<rel>_mask.*`` or ``<rel>.*``, else the same without the folder name."""
    rel = _key(image.relative_to(folder))
    for key in (f"{folder.name}/{rel}", rel):
        found = index.get(key, [])
        if len(found) > 1:
            names = ", ".join(str(f) for f in found)
            raise DataError(f"more than one mask for image {image}: {names}")
        if found:
            return found[0], key
    expected = mask_dir / folder.name / (image.relative_to(folder).with_suffix("").as_posix())
    raise DataError(
        f"no mask for abnormal image {image}: expected {expected}_mask.png (or the same "
        f"name without _mask, any image type) under the mask folder {mask_dir}"
    )


def _hold_out(train: _Split, fraction: float, seed: int, test: _Split) -> list[Path]:
    """Move a seeded share of the normal training images to the test split (first)."""
    n = len(train.images)
    if n < 2:
        raise DataError(
            f"no normal test images and only {n} normal training image: need at least 2 "
            "to hold some out (or add normal test images)"
        )
    k = min(n - 1, max(1, round(fraction * n)))
    rng = np.random.default_rng(seed)
    chosen = sorted(int(i) for i in rng.permutation(n)[:k])
    held = _Split()
    for i in chosen:
        held.add(train.images[i], 0, None, "good")
    chosen_set = set(chosen)
    keep = [i for i in range(n) if i not in chosen_set]
    train.images = [train.images[i] for i in keep]
    train.labels = [0] * len(keep)
    train.masks = [None] * len(keep)
    train.groups = [train.groups[i] for i in keep]
    for attr in ("images", "labels", "masks", "groups"):
        setattr(test, attr, getattr(held, attr) + getattr(test, attr))
    return held.images


def _check_disjoint(splits: dict[str, _Split]) -> None:
    seen: dict[Path, str] = {}
    for name, split in splits.items():
        for p in split.images:
            r = p.resolve()
            if r in seen and seen[r] != name:
                raise DataError(
                    f"{p} is in both the {seen[r]} and the {name} split; each image may be "
                    "in one split only (check the folders or the CSV)"
                )
            seen[r] = name


def _normal_split(paths: list[Path]) -> _Split:
    split = _Split()
    for p in paths:
        split.add(p, 0, None, "good")
    return split


def _rel(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- layouts


def _normal_test_images(root: Path | None, normal_test_dir) -> tuple[Path | None, list[Path]]:
    """The normal test folder (None without one) and its images."""
    if normal_test_dir is not None:
        ntd = _resolve(normal_test_dir, root)
        return ntd, _images_in(ntd, "normal test images", "normal_test_dir")
    ntd = _resolve("test/good", root) if root is not None else None
    return ntd, (pixels.list_image_files(ntd) if ntd is not None and ntd.is_dir() else [])


def _abnormal_folders(root: Path | None, abnormal_dirs, ntd: Path | None) -> list[Path]:
    """The folders of abnormal test images, one per defect kind (the folder's name)."""
    if abnormal_dirs is not None:
        if isinstance(abnormal_dirs, (str, os.PathLike)):
            abnormal_dirs = [abnormal_dirs]
        folders = [_resolve(d, root) for d in abnormal_dirs]
        for f in folders:
            _images_in(f, "abnormal test images", "abnormal_dirs")
    elif root is not None:
        test_root = root / "test"
        if not test_root.is_dir():
            raise DataError(
                f"folder not found: {test_root} (expected test/<defect>/ folders of abnormal "
                "images; or set abnormal_dirs)"
            )
        folders = sorted(
            d
            for d in test_root.iterdir()
            if d.is_dir()
            and not d.name.startswith(".")
            and d.name != "good"
            and (ntd is None or d.resolve() != ntd.resolve())
        )
    else:
        raise DataError("folder: abnormal_dirs is required when root is not given")
    if len({f.name for f in folders}) != len(folders):
        raise DataError(
            f"abnormal_dirs {[str(f) for f in folders]}: two folders have the same name; "
            "the folder name is the defect kind and must be unique"
        )
    return folders


def _mask_folder(root: Path | None, mask_dir) -> Path | None:
    if mask_dir is not None:
        mdir = _resolve(mask_dir, root)
        if not mdir.is_dir():
            raise DataError(f"folder not found: {mdir} (expected masks; set mask_dir)")
        return mdir
    if root is not None and (root / "ground_truth").is_dir():
        return root / "ground_truth"
    return None


def _add_abnormal(test: _Split, folders: list[Path], mdir: Path | None, base: Path) -> None:
    """Add the images of the abnormal ``folders`` to ``test``, with their masks when there
    is a mask folder ``mdir``; every mask there must belong to one of the images."""
    index = _mask_index(mdir) if mdir is not None else {}
    used: set[str] = set()
    n_abnormal = 0
    for folder in folders:
        for p in pixels.list_image_files(folder):
            mask = None
            if mdir is not None:
                mask, key = _find_mask(p, folder, index, mdir)
                used.add(key)
            test.add(p, 1, mask, folder.name)
            n_abnormal += 1
    if n_abnormal == 0:
        where = ", ".join(str(f) for f in folders) or f"{base / 'test'} (no defect folders)"
        raise DataError(
            f"no abnormal test images in {where} (expected test/<defect>/ folders of "
            f"{pixels.KINDS} files next to test/good; or set abnormal_dirs)"
        )
    orphans = sorted(m for k, ms in index.items() if k not in used for m in ms)
    if orphans:
        stem = _key(orphans[0].relative_to(mdir)).rsplit("/", 1)[-1]
        raise DataError(
            f"mask without its image: {orphans[0]} (expected an abnormal image {stem}.* in "
            f"{' or '.join(str(f) for f in folders)})"
            + (f"; {len(orphans) - 1} more masks without images" if len(orphans) > 1 else "")
        )


def _val_images(root: Path | None, val_dir) -> list[Path]:
    if val_dir is not None:
        return _images_in(_resolve(val_dir, root), "normal validation images", "val_dir")
    if root is None:
        return []
    folders = (root / "validation" / "good", root / "val" / "good")
    vd = next((d for d in folders if d.is_dir()), None)
    return [] if vd is None else pixels.list_image_files(vd)


def _plan_folders(
    root: Path | None,
    normal_dir,
    abnormal_dirs,
    normal_test_dir,
    mask_dir,
    val_dir,
) -> _Plan:
    if root is None and normal_dir is None:
        raise DataError(
            "folder: give root=<folder with train/good and test/<defect>>, "
            "or normal_dir and abnormal_dirs, or csv=<list of images>"
        )
    base = root if root is not None else _resolve(normal_dir, None).parent
    nd = _resolve(normal_dir if normal_dir is not None else "train/good", root)
    train = _normal_split(_images_in(nd, "normal training images", "normal_dir"))
    ntd, normal_test = _normal_test_images(root, normal_test_dir)
    test = _normal_split(normal_test)
    folders = _abnormal_folders(root, abnormal_dirs, ntd)
    mdir = _mask_folder(root, mask_dir)
    _add_abnormal(test, folders, mdir, base)
    splits = {"train": train, "test": test}
    val = _val_images(root, val_dir)
    if val:
        splits["val"] = _normal_split(val)
    return _Plan(splits, base, has_masks=mdir is not None)


def _read_rows(csv_path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The CSV's header and its rows with their line numbers (keys lower case, values
    stripped)."""
    try:
        with open(csv_path, newline="") as f:
            reader = csv_lib.DictReader(f)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            if "path" not in header or "label" not in header:
                raise DataError(
                    f"{csv_path}: expected a header row path,label[,mask,split], found "
                    f"{','.join(reader.fieldnames or []) or 'an empty file'}"
                )
            rows = []
            for line, row in enumerate(reader, start=2):
                row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
                rows.append((line, row))
    except OSError as exc:
        raise DataError(f"cannot read {csv_path}: {exc}") from exc
    except (csv_lib.Error, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse {csv_path} as CSV: {exc}") from exc
    return header, rows


def _csv_image(at: str, row: dict[str, str], base: Path) -> tuple[Path, int, str]:
    """The image, label and split of a CSV row (no split: train if normal, else test)."""
    if not row.get("path"):
        if row.get("mask"):
            raise DataError(f"{at}: mask without its image: {row['mask']} (path is empty)")
        raise DataError(f"{at}: path is empty")
    label = _LABELS.get(row.get("label", "").lower())
    if label is None:
        raise DataError(f"{at}: label must be 0/1 (or normal/abnormal), got {row.get('label')!r}")
    split = row.get("split", "").lower()
    if split:
        if split not in _SPLITS:
            raise DataError(f"{at}: split must be train, val or test, got {split!r}")
        split = _SPLITS[split]
    else:
        split = "train" if label == 0 else "test"
    if split == "train" and label == 1:
        raise DataError(f"{at}: an abnormal image in the train split (training is normal only)")
    image = _resolve(row["path"], base)
    if not image.is_file():
        raise DataError(f"{at}: image file not found: {image}")
    return image, label, split


def _csv_mask(
    at: str, row: dict[str, str], base: Path, image: Path, label: int, required: bool
) -> Path | None:
    """The mask of a CSV row's image, or None; ``required`` when other rows have one."""
    if not row.get("mask"):
        if required:
            raise DataError(
                f"{at}: abnormal image {image} has no mask while other rows have one; give "
                "every abnormal image a mask, or none"
            )
        return None
    mask = _resolve(row["mask"], base)
    if label == 0:
        raise DataError(f"{at}: a mask for a normal image ({mask}); masks mark anomalies")
    if not mask.is_file():
        raise DataError(f"{at}: mask file not found: {mask} (for image {image})")
    return mask


def _plan_csv(csv_path: Path, root: Path | None) -> _Plan:
    if not csv_path.is_file():
        raise DataError(f"CSV file not found: {csv_path} (expected path,label[,mask,split] rows)")
    base = root if root is not None else csv_path.parent
    header, rows = _read_rows(csv_path)
    if not rows:
        raise DataError(f"{csv_path} lists no images (expected path,label[,mask,split] rows)")

    splits = {"train": _Split(), "test": _Split(), "val": _Split()}
    has_masks = "mask" in header and any(row.get("mask") for _, row in rows)
    for line, row in rows:
        at = f"{csv_path}, line {line}"
        image, label, split = _csv_image(at, row, base)
        required = has_masks and label == 1 and split != "train"
        mask = _csv_mask(at, row, base, image, label, required)
        group = "good" if label == 0 else (image.parent.name or "abnormal")
        splits[split].add(image, label, mask, group)
    if not splits["train"].images:
        raise DataError(f"{csv_path}: no normal training images (rows with label 0)")
    if not any(splits["test"].labels):
        raise DataError(f"{csv_path}: no abnormal test images (rows with label 1)")
    if not splits["val"].images:
        del splits["val"]
    return _Plan(splits, base, meta_files=[csv_path], has_masks=has_masks)


def _plan(
    root: str | os.PathLike | None,
    csv: str | None,
    normal_dir,
    abnormal_dirs,
    normal_test_dir,
    mask_dir,
    val_dir,
) -> _Plan:
    """The files of every split: listed in ``csv``, else found in the folders."""
    root_path = None
    if root is not None:
        root_path = Path(root).expanduser()
        if not root_path.is_dir():
            raise DataError(f"data root {root_path} does not exist (expected a folder)")
    if csv is None:
        return _plan_folders(
            root_path, normal_dir, abnormal_dirs, normal_test_dir, mask_dir, val_dir
        )
    given = [
        n
        for n, v in (
            ("normal_dir", normal_dir),
            ("abnormal_dirs", abnormal_dirs),
            ("normal_test_dir", normal_test_dir),
            ("mask_dir", mask_dir),
            ("val_dir", val_dir),
        )
        if v is not None
    ]
    if given:
        raise DataError(f"give either csv or folders, not both (also given: {given[0]})")
    return _plan_csv(_resolve(csv, root_path), root_path)


# ----------------------------------------------------------------------------- validation


def _given_val(plan: _Plan) -> str | None:
    """Where the data's own validation images come from, or None without any."""
    val = plan.splits.get("val")
    if val is None or not val.images:
        return None
    if plan.meta_files:
        return f"{len(val.images)} rows with split val in {plan.meta_files[0].name}"
    return f"{len(val.images)} images in {_rel(val.images[0].parent, plan.base)}"


def _subset(split: _Split, rows: Sequence[int]) -> _Split:
    out = _Split()
    for i in rows:
        out.add(split.images[i], split.labels[i], split.masks[i], split.groups[i])
    return out


def _carve_val(
    arrays: dict[str, np.ndarray], plan: _Plan, mode: str, ratio: float | None, seed: int
) -> dict[str, np.ndarray]:
    """``arrays`` with a validation split drawn from the training images (``from_train``)
    or the test images (``from_test``, stratified by label and defect kind); ``plan``'s
    file lists follow. Other modes return ``arrays`` unchanged."""
    if mode not in ("from_train", "from_test") or ratio is None:
        return arrays
    src = "train" if mode == "from_train" else "test"
    split = plan.splits[src]
    rng = splits.val_rng(seed)
    if mode == "from_train":
        if len(split.images) < 2:
            raise DataError(
                f"val_split from_train needs at least 2 normal training images, found "
                f"{len(split.images)} (add images or use val_split: none)"
            )
        rows = splits.pick_share(len(split.images), ratio, rng)
    else:
        rows = splits.stratified_pick(split.labels, split.groups, ratio, rng)
    keep = np.setdiff1d(np.arange(len(split.images)), rows)
    out = dict(arrays)
    for suffix in ("", "_labels", "_masks"):
        if src + suffix in arrays:
            out["val" + suffix] = arrays[src + suffix][rows]
            out[src + suffix] = arrays[src + suffix][keep]
    if mode == "from_train":
        out["val_labels"] = np.zeros(len(rows), dtype=np.int64)
    plan.splits["val"] = _subset(split, rows)
    plan.splits[src] = _subset(split, keep)
    return out


def _split_notes(
    plan: _Plan, mode: str, ratio: float | None, seed: int, holdout_fraction: float
) -> dict[str, str]:
    """How each split was made, one phrase each (counts are added by describe_splits)."""
    n_val = len(plan.splits["val"].images) if "val" in plan.splits else 0
    train = "normal training images"
    test = "test images (normal and abnormal)"
    if plan.held_out:
        train += (
            f"; {len(plan.held_out)} moved to test as normal test images (no normal test "
            f"images; holdout_fraction {holdout_fraction:g}, seed {seed})"
        )
    pct = f"{100 * ratio:g} %" if ratio is not None else ""
    if mode == "from_train":
        val = f"from_train: {pct} of the normal training images, drawn with seed {seed}"
        train += f"; {n_val} held out for validation"
    elif mode == "from_test":
        val = (
            f"from_test: {pct} of the test images, stratified by label and defect kind, "
            f"drawn with seed {seed}; disjoint from the remaining test images"
        )
        test += f"; {n_val} moved to validation"
    elif mode == "given":
        val = f"given: {_given_val(plan)}"
    else:
        val = mode if ":" in mode else "none (val_split: none)"
    return {"train": train, "val": val, "test": test}


# ----------------------------------------------------------------------------- loading


def _build(plan: _Plan, reader_kw: dict, image_size: int) -> dict[str, np.ndarray]:
    def image(p: Path) -> np.ndarray:
        return pixels.load_image(p, image_size=image_size, **reader_kw).astype(np.float16)

    out: dict[str, np.ndarray] = {}
    for name, split in plan.splits.items():
        out[name] = np.stack(pixels.map_files(image, split.images))
        if name != "train":
            out[f"{name}_labels"] = np.asarray(split.labels, dtype=np.int64)
            if plan.has_masks and (name == "test" or any(m is not None for m in split.masks)):
                masks = np.zeros((len(split.images), 1, image_size, image_size), np.uint8)
                which = [i for i, m in enumerate(split.masks) if m is not None]
                loaded = pixels.map_files(
                    lambda m: pixels.load_mask(m, image_size=image_size),
                    [split.masks[i] for i in which],
                )
                for i, m in zip(which, loaded):
                    masks[i] = m
                out[f"{name}_masks"] = masks
    return out


def _reader_kw(rgb, normalize, percentiles, value_range, window) -> dict:
    """The checked keyword arguments of :func:`pixels.load_image`."""
    if normalize not in pixels.NORMALIZE_MODES:
        raise DataError(
            f"normalize must be one of {', '.join(pixels.NORMALIZE_MODES)}, got {normalize!r}"
        )
    percentiles = pixels.check_percentiles(percentiles)
    value_range = pixels.check_pair("value_range", value_range)
    window = pixels.check_pair("window", window, increasing=False)
    if window is not None and window[1] <= 0:
        raise DataError(f"window must be [center, width] with width > 0, got {list(window)}")
    return {
        "rgb": bool(rgb),
        "normalize": normalize,
        "percentiles": percentiles,
        "value_range": value_range,
        "window": window,
    }


def _cached_images(
    plan: _Plan,
    reader_kw: dict,
    image_size: int,
    cache: bool,
    cache_dir: str | os.PathLike | None,
) -> tuple[dict[str, np.ndarray], str, Path | None]:
    """The arrays of ``plan`` (see :func:`cache.cached_arrays`)."""
    files = list(plan.meta_files)
    for split in plan.splits.values():
        files += split.images + [m for m in split.masks if m is not None]
    params = {
        "base": str(plan.base.resolve()),
        "image_size": image_size,
        "splits": {k: [str(p) for p in s.images] for k, s in plan.splits.items()},
        "masks": plan.has_masks,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in reader_kw.items()},
    }
    key = cache_lib.cache_key("folder", params, cache_lib.file_fingerprint(files, plan.base))
    if cache_dir is None:
        cache_dir = cache_lib.default_cache_dir(plan.base)
    return cache_lib.cached_arrays(
        key,
        lambda: _build(plan, reader_kw, image_size),
        cache_dir=cache_dir,
        prefix=f"folder-{image_size}",
        use_cache=cache,
    )


@register_source("folder")
def load_folder(
    root: str | os.PathLike | None = None,
    normal_dir: str | None = None,
    abnormal_dirs: Sequence[str] | str | None = None,
    normal_test_dir: str | None = None,
    mask_dir: str | None = None,
    val_dir: str | None = None,
    csv: str | None = None,
    val_split: str = "auto",
    val_split_ratio: float | None = None,
    image_size: int = 64,
    rgb: bool = False,
    normalize: str = "auto",
    percentiles: Sequence[float] = (1.0, 99.0),
    value_range: Sequence[float] | None = None,
    window: Sequence[float] | None = None,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> AnomalyDataset:
    """Load your own images (see the module docstring for the layouts and parameters)."""
    image_size = pixels.check_int("image_size", image_size, 1)
    seed = pixels.check_int("seed", seed, 0)
    reader_kw = _reader_kw(rgb, normalize, percentiles, value_range, window)
    if isinstance(holdout_fraction, bool) or not (
        isinstance(holdout_fraction, (int, float)) and 0.0 < holdout_fraction < 1.0
    ):
        raise DataError(f"holdout_fraction must be in (0, 1), got {holdout_fraction!r}")
    val_split, val_split_ratio = splits.check_val_split(val_split, val_split_ratio)

    plan = _plan(root, csv, normal_dir, abnormal_dirs, normal_test_dir, mask_dir, val_dir)
    mode, ratio = splits.resolve_val_split(val_split, val_split_ratio, _given_val(plan))
    if mode == "none":
        plan.splits.pop("val", None)
    if not any(label == 0 for label in plan.splits["test"].labels):
        plan.held_out = _hold_out(
            plan.splits["train"], float(holdout_fraction), seed, plan.splits["test"]
        )
    _check_disjoint(plan.splits)
    arrays, where, cache_file = _cached_images(plan, reader_kw, image_size, cache, cache_dir)
    if mode == "from_train" and len(plan.splits["train"].images) < 2 and val_split == "auto":
        mode = "none: only 1 normal training image, none to spare for validation"
    arrays = _carve_val(arrays, plan, mode, ratio, seed)

    train, test = plan.splits["train"], plan.splits["test"]
    val = plan.splits.get("val", _Split())
    groups = ", ".join(f"{g} {n}" for g, n in Counter(test.groups).items())
    window = reader_kw["window"]
    return AnomalyDataset(
        name=Path(csv).stem if csv is not None else (plan.base.resolve().name or "folder"),
        description=(
            f"image folder {plan.base}: {len(train.images)} normal training, "
            f"{len(val.images)} validation, {len(test.images)} test images ({groups}), "
            f"{image_size} px, {'RGB' if rgb else 'grayscale'}"
        ),
        **cache_lib.split_tensors(arrays),
        info={
            "source": "folder",
            "root": str(plan.base),
            "csv": None if csv is None else str(plan.meta_files[0]),
            "n_train": len(train.images),
            "n_val": len(val.images),
            "test_groups": list(test.groups),
            "test_files": [_rel(p, plan.base) for p in test.images],
            "val_groups": list(val.groups),
            "val_files": [_rel(p, plan.base) for p in val.images],
            "val_split": mode.split(":")[0],
            "val_split_ratio": ratio if mode in ("from_train", "from_test") else None,
            "splits": _split_notes(plan, mode, ratio, seed, holdout_fraction),
            "held_out": [_rel(p, plan.base) for p in plan.held_out],
            "holdout_fraction": float(holdout_fraction) if plan.held_out else None,
            "seed": seed,
            "normalize": "window" if window is not None else normalize,
            "window": None if window is None else list(window),
            "cache": where,
            "cache_file": None if cache_file is None else str(cache_file),
        },
    )
