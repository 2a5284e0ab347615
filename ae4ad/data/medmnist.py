"""A local MedMNIST ``.npz`` file as an anomaly-detection data set (never downloads).

The file holds ``train_images, train_labels, val_images, val_labels, test_images,
test_labels``; images are uint8 N x H x W (grayscale) or N x H x W x 3, labels N x 1.
Images whose label is in ``normal_labels`` are normal:

- train = the normal training images, val = the normal validation images,
- test = all test images, label 1 where the class is not normal.

Multi-label files (labels N x K with K > 1, e.g. ChestMNIST) count an image as normal when
it has no positive label; ``normal_labels`` is then not used.

Example:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from ae4ad.data import load_dataset
    >>> rng = np.random.default_rng(0)
    >>> arrays = {}
    >>> for split, n in (("train", 20), ("val", 6), ("test", 10)):
    ...     arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    ...     arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1)
    >>> path = Path(tempfile.mkdtemp()) / "toymnist.npz"
    >>> np.savez(path, **arrays)
    >>> ds = load_dataset("medmnist", path=path, image_size=32)
    >>> ds.summary()["n_train"], ds.summary()["n_test_abnormal"], tuple(ds.train.shape[1:])
    (10, 5, (1, 32, 32))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ae4ad.data import cache as cache_lib
from ae4ad.data.base import AnomalyDataset, DataError, register_source

_KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")


def _default_path(flag: str | None, image_size: int) -> Path:
    root = os.environ.get("AE4AD_DATA")
    if flag is None or not root:
        raise DataError(
            "no MedMNIST file given: pass path=<file>.npz, or flag=<name> (e.g. "
            "'pneumoniamnist') with the AE4AD_DATA environment variable set to the folder "
            "holding <flag>_<size>.npz"
        )
    candidates = [Path(root) / f"{flag}_{image_size}.npz", Path(root) / f"{flag}.npz"]
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(
        f"MedMNIST file not found: {candidates[0]} (or {candidates[1]}); download "
        f"{candidates[0].name} from MedMNIST (https://medmnist.com) and put it there, or "
        "pass path=<file>.npz"
    )


def _normal_set(normal_labels: int | Sequence[int]) -> list[int]:
    values = [normal_labels] if isinstance(normal_labels, (int, np.integer)) else normal_labels
    try:
        out = sorted({int(v) for v in values})
    except (TypeError, ValueError):
        raise DataError(
            f"normal_labels must be an int or a list of ints, got {normal_labels!r}"
        ) from None
    if not out:
        raise DataError("normal_labels must name at least one class")
    return out


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The six arrays of a MedMNIST file."""
    if not path.is_file():
        raise DataError(
            f"MedMNIST file not found: {path}; download it from MedMNIST "
            f"(https://medmnist.com, e.g. pneumoniamnist_64.npz) and pass path=<file>.npz"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _KEYS if k not in z.files]
            if missing:
                raise DataError(
                    f"{path}: missing keys {', '.join(missing)}; expected {', '.join(_KEYS)}"
                )
            return {k: z[k] for k in _KEYS}
    except (OSError, ValueError, EOFError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"cannot read {path} as a .npz file: {exc}") from exc


def _split_labels(data: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """The labels of each split as N x K (K = 1 unless the file is multi-label)."""
    labels = {}
    for split in ("train", "val", "test"):
        lab = np.asarray(data[f"{split}_labels"])
        lab = lab.reshape(len(lab), -1) if lab.ndim != 2 else lab
        if len(lab) != len(data[f"{split}_images"]):
            raise DataError(
                f"{path}: {len(data[f'{split}_images'])} {split}_images but {len(lab)} labels"
            )
        labels[split] = lab
    return labels


@register_source("medmnist")
def load_medmnist(
    path: str | os.PathLike | None = None,
    flag: str | None = None,
    normal_labels: int | Sequence[int] = 0,
    image_size: int = 64,
    rgb: bool = False,
) -> AnomalyDataset:
    """Load a MedMNIST ``.npz`` (see the module docstring).

    Args:
        path: the ``.npz`` file. Default: ``$AE4AD_DATA/<flag>_<image_size>.npz``, else
            ``$AE4AD_DATA/<flag>.npz`` (the 28 px file).
        flag: MedMNIST data set name used for the default path, e.g. "pneumoniamnist".
        normal_labels: class id(s) that are normal (default 0).
        image_size: side S of the square images (bilinear resize when it differs).
        rgb: 3 channels (grayscale files are repeated); otherwise colour files are
            converted to grayscale.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    path = _default_path(flag, image_size) if path is None else Path(path)
    data = _read_npz(path)
    normal = _normal_set(normal_labels)
    labels = _split_labels(data, path)
    multi_label = labels["train"].shape[1] > 1
    if not multi_label:
        present = sorted({int(v) for lab in labels.values() for v in lab[:, 0]})
        unknown = [v for v in normal if v not in present]
        if unknown:
            raise DataError(f"normal_labels {unknown} not among the labels in {path}: {present}")

    def is_normal(lab: np.ndarray) -> np.ndarray:
        if multi_label:
            return lab.sum(axis=1) == 0
        return np.isin(lab[:, 0], normal)

    def images(x: np.ndarray) -> torch.Tensor:
        try:
            resized = cache_lib.resize_array(x, image_size=image_size, rgb=rgb)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
        return torch.from_numpy(cache_lib.to_unit_range(resized))

    def checked(x: np.ndarray, where: str) -> np.ndarray:
        if len(x) == 0:
            raise DataError(f"{path}: the {where} split is empty (no normal images)")
        return x

    train_normal = is_normal(labels["train"])
    val_normal = is_normal(labels["val"])
    test_normal = is_normal(labels["test"])
    train = images(checked(data["train_images"][train_normal], "train"))
    val_x = data["val_images"][val_normal]
    name = flag or path.stem
    return AnomalyDataset(
        name=name,
        description=(
            f"MedMNIST {path.name}: normal = {'no finding' if multi_label else normal}, "
            f"{image_size} px, {'RGB' if rgb else 'grayscale'}"
        ),
        train=train,
        test=images(data["test_images"]),
        test_labels=torch.from_numpy((~test_normal).astype(np.int64)),
        val=images(val_x) if len(val_x) else None,
        val_labels=torch.zeros(len(val_x), dtype=torch.long) if len(val_x) else None,
        info={
            "source": "medmnist",
            "path": str(path),
            "normal_labels": None if multi_label else normal,
            "multi_label": multi_label,
        },
    )
