"""The seven data sets of MedIAnomaly-Data, in the folder layouts used by the paper.

``load_dataset("medianomaly", dataset="RSNA", root="/data/MedIAnomaly-Data")`` reads the
folder ``<root>/<dataset>`` (``root`` defaults to the ``AE4AD_DATA`` environment variable).
Layouts (file names are examples):

- RSNA, VinCXR, BrainTumor, LAG::

      <dataset>/images/<file>          all images
      <dataset>/data.json              {"train": {"0": [normal files]},
                                        "test": {"0": [normal files], "1": [abnormal files]}}

  An optional ``"val"`` entry with the same form as ``"test"`` becomes the validation split.
- BraTS2021 (pixel masks)::

      BraTS2021/train/*.png                normal slices (subfolders are searched too)
      BraTS2021/test/normal/*.png          normal slices
      BraTS2021/test/tumor/X_flair_Y.png   abnormal slices
      BraTS2021/test/annotation/X_seg_Y.png  mask of X_flair_Y.png (a mask with the same
                                             file name as the tumor slice is accepted too)

  Normal test slices get all-zero masks.
- Camelyon16: ``train/good``, ``test/good`` (normal), ``test/Ungood`` (abnormal). RGB by
  default, as in the paper's code.
- ISIC2018 (Task 3; folder ``ISIC2018_Task3`` or ``ISIC2018``)::

      ISIC2018_Task3_Training_Input/<image>.jpg
      ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv
      ISIC2018_Task3_Test_Input/<image>.jpg
      ISIC2018_Task3_Test_GroundTruth/ISIC2018_Task3_Test_GroundTruth.csv
      ISIC2018_Task3_Validation_Input/, ISIC2018_Task3_Validation_GroundTruth/  (optional)

  The CSVs are the official one-hot tables (columns image, MEL, NV, BCC, AKIEC, BKL, DF,
  VASC; the file may also sit directly in the data set folder). NV (melanocytic nevus) is
  normal, every other class abnormal. Train = the NV images of Training; test = Test, or
  Validation when there is no Test; when both exist, Validation is the (labelled)
  validation split.

Images are converted to grayscale (``rgb=False``) or RGB, resized bilinearly to
``image_size`` and scaled to [-1, 1]; masks are binarised and resized with nearest
neighbour. The resized arrays are cached on disk (see :mod:`ae4ad.data.cache`).

Example (needs the data)::

    >>> from ae4ad.data import load_dataset
    >>> ds = load_dataset("medianomaly", dataset="BraTS2021", image_size=64)  # doctest: +SKIP
    >>> ds.summary()["has_masks"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ae4ad.data import cache as cache_lib
from ae4ad.data.base import AnomalyDataset, DataError, register_source

DATASETS: dict[str, str] = {
    "RSNA": "chest X-rays (RSNA Pneumonia Detection Challenge)",
    "VinCXR": "chest X-rays (VinDr-CXR)",
    "BrainTumor": "brain MRI slices (Brain Tumor MRI)",
    "LAG": "fundus photographs (LAG glaucoma)",
    "BraTS2021": "brain MRI FLAIR slices with tumor masks (BraTS 2021)",
    "Camelyon16": "lymph-node histopathology patches (Camelyon16)",
    "ISIC2018": "dermoscopy images (ISIC 2018 Task 3; nevus is normal)",
}
_ALIASES = {name.lower(): name for name in DATASETS} | {
    "vin": "VinCXR",
    "vindr-cxr": "VinCXR",
    "brain": "BrainTumor",
    "brats": "BraTS2021",
    "c16": "Camelyon16",
    "isic": "ISIC2018",
    "isic2018_task3": "ISIC2018",
}
_JSON_DATASETS = ("RSNA", "VinCXR", "BrainTumor", "LAG")
_ISIC_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")


@dataclass
class _Split:
    """Files of one split: image paths, labels and (when the data set has masks) mask
    paths, None for normal images."""

    images: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    masks: list[Path | None] | None = None

    def add(self, paths: list[Path], label: int, masks: list[Path | None] | None = None) -> None:
        self.images += paths
        self.labels += [label] * len(paths)
        if masks is not None:
            self.masks = (self.masks or []) + masks

    def subset(self, idx: list[int]) -> _Split:
        return _Split(
            images=[self.images[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            masks=None if self.masks is None else [self.masks[i] for i in idx],
        )


@dataclass
class _Plan:
    splits: dict[str, _Split]
    meta_files: list[Path]
    has_masks: bool = False


def _canonical(dataset: str) -> str:
    name = _ALIASES.get(str(dataset).lower())
    if name is None:
        raise DataError(f"unknown MedIAnomaly dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    return name


def _dataset_folder(root: str | os.PathLike | None, name: str) -> tuple[Path, Path]:
    if root is None:
        root = os.environ.get("AE4AD_DATA") or None
    if root is None:
        raise DataError(
            f"no data root for {name}: pass root=<folder holding {name}/> "
            "or set the AE4AD_DATA environment variable"
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data root {root} does not exist; set `root` or AE4AD_DATA to the folder "
            f"that holds {name}/"
        )
    candidates = [root / name] + ([root / "ISIC2018_Task3"] if name == "ISIC2018" else [])
    for folder in candidates:
        if folder.is_dir():
            return root, folder
    raise DataError(
        f"{' or '.join(str(c) for c in candidates)} not found; set `root` or AE4AD_DATA to "
        f"the folder that holds the MedIAnomaly-Data {name}/ folder"
    )


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"folder not found: {path} (expected {what})")
    return path


def _nonempty(paths: list, where: Path | str, split: str) -> list:
    if not paths:
        raise DataError(f"the {split} split is empty: no images in {where}")
    return paths


# ----------------------------------------------------------------------------- layouts


def _plan_json(folder: Path) -> _Plan:
    json_path = folder / "data.json"
    images = _require_dir(folder / "images", "an images/ folder next to data.json")
    if not json_path.is_file():
        raise DataError(f"file not found: {json_path} (expected data.json listing the splits)")
    try:
        data = json.loads(json_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot parse {json_path} as JSON: {exc}") from exc

    expected = 'expected keys {"train": {"0": [...]}, "test": {"0": [...], "1": [...]}}'

    def names(split: str, label: str) -> list[str]:
        try:
            value = data[split][label]
        except (KeyError, TypeError, IndexError):
            found = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise DataError(
                f"{json_path}: missing {split}/{label!r}; {expected} (found top-level {found})"
            ) from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DataError(f"{json_path}: {split}/{label!r} must be a list of file names")
        return value

    def split_of(split: str, labels: tuple[str, ...]) -> _Split:
        out = _Split()
        for label in labels:
            out.add([images / n for n in names(split, label)], int(label))
        _nonempty(out.images, f"{json_path} ({split})", split)
        return out

    splits = {"train": split_of("train", ("0",)), "test": split_of("test", ("0", "1"))}
    if isinstance(data, dict) and "val" in data:
        present = tuple(k for k in ("0", "1") if k in (data["val"] or {}))
        if not present:
            raise DataError(f"{json_path}: val must hold '0' and/or '1' lists of file names")
        splits["val"] = split_of("val", present)
    return _Plan(splits, [json_path])


def _mask_for(tumor: Path, annotation: Path) -> Path:
    candidates = [annotation / tumor.name.replace("flair", "seg"), annotation / tumor.name]
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(
        f"mask not found for tumor image {tumor}: expected {candidates[0]}"
        + (f" or {candidates[1]}" if candidates[1] != candidates[0] else "")
    )


def _plan_brats(folder: Path) -> _Plan:
    train_dir = _require_dir(folder / "train", "normal training slices in train/")
    normal_dir = _require_dir(folder / "test" / "normal", "normal test slices")
    tumor_dir = _require_dir(folder / "test" / "tumor", "abnormal test slices")
    mask_dir = _require_dir(folder / "test" / "annotation", "tumor masks X_seg_Y.png")
    train = _Split()
    train.add(_nonempty(cache_lib.list_images(train_dir, recursive=True), train_dir, "train"), 0)
    test = _Split(masks=[])
    normal = cache_lib.list_images(normal_dir)
    tumor = cache_lib.list_images(tumor_dir)
    _nonempty(normal + tumor, f"{normal_dir} and {tumor_dir}", "test")
    test.add(normal, 0, [None] * len(normal))
    test.add(tumor, 1, [mask_dir] * len(tumor))  # resolved after subsetting
    return _Plan({"train": train, "test": test}, [], has_masks=True)


def _plan_camelyon(folder: Path) -> _Plan:
    train_dir = folder / "train" / "good"
    train = _Split()
    train.add(_nonempty(cache_lib.list_images(train_dir), train_dir, "train"), 0)
    test = _Split()
    good, ungood = folder / "test" / "good", folder / "test" / "Ungood"
    test.add(cache_lib.list_images(good), 0)
    test.add(cache_lib.list_images(ungood), 1)
    _nonempty(test.images, f"{good} and {ungood}", "test")
    return _Plan({"train": train, "test": test}, [])


def _read_isic_csv(path: Path) -> list[tuple[str, int]]:
    """(image id, label) rows of an ISIC 2018 Task 3 ground-truth CSV; label 0 for NV."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            if "image" not in header or "NV" not in header:
                raise DataError(
                    f"{path}: expected columns image,{','.join(_ISIC_CLASSES)} "
                    f"(one-hot), found {','.join(header) or 'no header'}"
                )
            rows = []
            for line, row in enumerate(reader, start=2):
                try:
                    nv = float(row["NV"])
                except (TypeError, ValueError):
                    raise DataError(
                        f"{path}, line {line}: NV must be 0 or 1, got {row['NV']!r}"
                    ) from None
                rows.append((row["image"], 0 if nv >= 0.5 else 1))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    return rows


def _isic_part(folder: Path, part: str) -> tuple[Path, Path] | None:
    """(images folder, CSV) of Training / Validation / Test, or None when absent."""
    images = folder / f"ISIC2018_Task3_{part}_Input"
    name = f"ISIC2018_Task3_{part}_GroundTruth"
    csvs = [folder / name / f"{name}.csv", folder / f"{name}.csv"]
    found = next((c for c in csvs if c.is_file()), None)
    if not images.is_dir() and found is None:
        return None
    if not images.is_dir():
        raise DataError(f"folder not found: {images} (images of {found})")
    if found is None:
        raise DataError(f"ground-truth CSV not found: expected {csvs[0]} or {csvs[1]}")
    return images, found


def _isic_image(images: Path, image_id: str) -> Path:
    for ext in (".jpg", ".jpeg", ".png", ".JPG"):
        if (images / (image_id + ext)).is_file():
            return images / (image_id + ext)
    return images / (image_id + ".jpg")  # reported as missing when read


def _plan_isic(folder: Path) -> _Plan:
    training = _isic_part(folder, "Training")
    if training is None:
        raise DataError(
            f"{folder}: expected ISIC2018_Task3_Training_Input/ and "
            "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv"
        )
    test_part = _isic_part(folder, "Test")
    val_part = _isic_part(folder, "Validation")
    if test_part is None and val_part is None:
        raise DataError(
            f"{folder}: expected a test split: ISIC2018_Task3_Test_Input/ + "
            "ISIC2018_Task3_Test_GroundTruth/ISIC2018_Task3_Test_GroundTruth.csv "
            "(or the Validation equivalents)"
        )
    if test_part is None:
        test_part, val_part = val_part, None

    def split_of(part: tuple[Path, Path], normal_only: bool, split: str) -> _Split:
        images, csv_path = part
        rows = _read_isic_csv(csv_path)
        out = _Split()
        for label in (0,) if normal_only else (0, 1):
            out.add([_isic_image(images, i) for i, lab in rows if lab == label], label)
        _nonempty(out.images, csv_path, split)
        return out

    splits = {
        "train": split_of(training, True, "train"),
        "test": split_of(test_part, False, "test"),
    }
    meta = [training[1], test_part[1]]
    if val_part is not None:
        splits["val"] = split_of(val_part, False, "val")
        meta.append(val_part[1])
    return _Plan(splits, meta)


# ----------------------------------------------------------------------------- loading


def _check_cap(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{name} must be a positive integer or None, got {value!r}")
    return value


def _capped(split: _Split, cap: int | None, stratified: bool) -> _Split:
    """A deterministic subset of at most ``cap`` items; per label proportional (at least one
    of each label) when ``stratified``."""
    n = len(split.images)
    if cap is None or cap >= n:
        return split
    rng = np.random.default_rng(0)
    labels = np.asarray(split.labels)
    groups = [np.flatnonzero(labels == lab) for lab in np.unique(labels)]
    if not stratified or len(groups) == 1 or cap < len(groups):
        idx = rng.choice(n, size=cap, replace=False)
    else:
        counts = [max(1, round(cap * len(g) / n)) for g in groups]
        counts[int(np.argmax(counts))] += cap - sum(counts)
        idx = np.concatenate(
            [rng.choice(g, size=min(c, len(g)), replace=False) for g, c in zip(groups, counts)]
        )
    return split.subset(sorted(int(i) for i in idx))


def _resolve_masks(split: _Split) -> None:
    if split.masks is None:
        return
    split.masks = [
        None if m is None else _mask_for(img, m) for img, m in zip(split.images, split.masks)
    ]


def _check_files(split: _Split, plan_name: str) -> None:
    for p in split.images:
        if not p.is_file():
            raise DataError(f"image file not found: {p} (listed for {plan_name})")


def _plan(name: str, folder: Path, max_train: int | None, max_test: int | None) -> _Plan:
    """The files of every split of data set ``name``, capped, checked, masks found."""
    if name in _JSON_DATASETS:
        plan = _plan_json(folder)
    elif name == "BraTS2021":
        plan = _plan_brats(folder)
    elif name == "Camelyon16":
        plan = _plan_camelyon(folder)
    else:
        plan = _plan_isic(folder)
    plan.splits["train"] = _capped(plan.splits["train"], max_train, stratified=False)
    plan.splits["test"] = _capped(plan.splits["test"], max_test, stratified=True)
    for split_name, split in plan.splits.items():
        _check_files(split, f"the {split_name} split of {name}")
        _resolve_masks(split)
    return plan


def _build(plan: _Plan, image_size: int, rgb: bool) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for split_name, split in plan.splits.items():
        key = split_name
        out[key] = cache_lib.load_images(split.images, image_size=image_size, rgb=rgb)
        if split_name != "train":
            out[f"{key}_labels"] = np.asarray(split.labels, dtype=np.int64)
        if split.masks is not None:
            masks = np.zeros((len(split.images), 1, image_size, image_size), dtype=np.uint8)
            which = [i for i, m in enumerate(split.masks) if m is not None]
            if which:
                masks[which] = cache_lib.load_masks(
                    [split.masks[i] for i in which], image_size=image_size
                )
            out[f"{key}_masks"] = masks
    return out


@register_source("medianomaly")
def load_medianomaly(
    dataset: str = "RSNA",
    root: str | os.PathLike | None = None,
    image_size: int = 64,
    rgb: bool | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
) -> AnomalyDataset:
    """Load one MedIAnomaly-Data set (see the module docstring for the layouts).

    Args:
        dataset: RSNA, VinCXR, BrainTumor, LAG, BraTS2021, Camelyon16 or ISIC2018
            (case-insensitive; the paper code's short names rsna, vin, brain, lag, brats,
            c16, isic work too).
        root: folder holding ``<dataset>/``; default: the ``AE4AD_DATA`` environment variable.
        image_size: side S of the square images.
        rgb: keep 3 channels; None means the paper's choice (RGB for Camelyon16 only).
        cache: read/write the resized arrays in ``cache_dir`` and memoise them in-process.
        cache_dir: default ``AE4AD_CACHE`` or ``<root>/.ae4ad_cache``.
        max_train / max_test: keep at most this many train / test images (a fixed random
            subset; the test subset keeps both labels in proportion).
    """
    name = _canonical(dataset)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    max_train = _check_cap("max_train", max_train)
    max_test = _check_cap("max_test", max_test)
    rgb = (name == "Camelyon16") if rgb is None else bool(rgb)
    root_path, folder = _dataset_folder(root, name)

    plan = _plan(name, folder, max_train, max_test)
    files = list(plan.meta_files)
    for split in plan.splits.values():
        files += split.images + [m for m in (split.masks or []) if m is not None]
    params = {
        "dataset": name,
        "folder": str(folder.resolve()),
        "image_size": image_size,
        "rgb": rgb,
        "max_train": max_train,
        "max_test": max_test,
    }
    key = cache_lib.cache_key("medianomaly", params, cache_lib.file_fingerprint(files, folder))
    if cache_dir is None:
        cache_dir = cache_lib.default_cache_dir(root_path)
    arrays, where, cache_file = cache_lib.cached_arrays(
        key,
        lambda: _build(plan, image_size, rgb),
        cache_dir=cache_dir,
        prefix=f"medianomaly-{name}-{image_size}",
        use_cache=cache,
    )

    return AnomalyDataset(
        name=name,
        description=(
            f"MedIAnomaly-Data {name}: {DATASETS[name]}, {image_size} px, "
            f"{'RGB' if rgb else 'grayscale'}"
        ),
        **cache_lib.split_tensors(arrays, unit_range=True),
        info={
            "source": "medianomaly",
            "folder": str(folder),
            "rgb": rgb,
            "max_train": max_train,
            "max_test": max_test,
            "cache": where,
            "cache_file": None if cache_file is None else str(cache_file),
        },
    )
