"""Validation splits of the file-based sources (``folder``, ``nifti``): the ``val_split``
and ``val_split_ratio`` parameters, the seeded draws, and a one-line account of every
split of a loaded data set (:func:`describe_splits`).

``val_split`` is one of:

- ``"auto"`` (default): the validation images the data name themselves (a validation
  folder, CSV rows with split ``val``, NIfTI ``val_fraction``) when there are any, else
  ``"from_train"``.
- ``"from_train"``: a seeded share ``val_split_ratio`` (default 0.1) of the normal
  training images (training subjects, for volumes) is held out of training as a normal
  validation split. It gives the reconstruction error of unseen normal images (the elbow
  predictor of latent_dim) but no ``val_auc``.
- ``"from_test"``: a seeded share ``val_split_ratio`` (default 0.5) of the test images
  (test subjects, for volumes), stratified by label and defect kind, moves from the test
  split to a labelled validation split; the rest stay test images. It gives ``val_auc`` /
  ``val_ap`` (a search can select on them) and the elbow predictor.
- ``"none"``: no validation split.

The draws happen after loading, on the cached arrays, so the cache key does not depend
on them.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> labels = [0] * 4 + [1] * 6
    >>> groups = ["good"] * 4 + ["crack"] * 4 + ["hole"] * 2
    >>> picked = stratified_pick(labels, groups, 0.5, rng)
    >>> sorted(groups[i] for i in picked)
    ['crack', 'crack', 'good', 'good', 'hole']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from ae4ad.data.base import AnomalyDataset, DataError

__all__ = [
    "DEFAULT_RATIO",
    "VAL_SPLITS",
    "check_val_split",
    "describe_splits",
    "pick_share",
    "resolve_val_split",
    "stratified_pick",
    "val_rng",
]

VAL_SPLITS = ("auto", "from_train", "from_test", "none")
DEFAULT_RATIO = {"from_train": 0.1, "from_test": 0.5}
_VAL_STREAM = 1  # the validation draw's stream of the seed (the test hold-out uses the seed)


def check_val_split(val_split: object, val_split_ratio: object) -> tuple[str, float | None]:
    """The checked ``val_split`` and ``val_split_ratio`` (None: the mode's default)."""
    if val_split not in VAL_SPLITS:
        raise DataError(f"val_split must be one of {', '.join(VAL_SPLITS)}, got {val_split!r}")
    if val_split_ratio is None:
        return str(val_split), None
    ok = isinstance(val_split_ratio, (int, float)) and not isinstance(val_split_ratio, bool)
    if not ok or not 0.0 < val_split_ratio < 1.0:
        raise DataError(f"val_split_ratio must be in (0, 1) or null, got {val_split_ratio!r}")
    if val_split == "none":
        raise DataError("val_split_ratio is given but val_split is none; drop one of them")
    return str(val_split), float(val_split_ratio)


def resolve_val_split(
    val_split: str, ratio: float | None, given: str | None
) -> tuple[str, float | None]:
    """The split to make: ``"given"`` (the data's own validation images, described by
    ``given``; None when there are none), ``"from_train"``, ``"from_test"`` or ``"none"``,
    with its ratio."""
    if given is not None:
        if val_split in ("from_train", "from_test"):
            raise DataError(
                f"val_split is {val_split} but the data already name validation images "
                f"({given}); use val_split: auto to keep them, or remove them"
            )
        if val_split == "auto":
            if ratio is not None:
                raise DataError(
                    f"val_split_ratio is not used: the data name validation images ({given}); "
                    "drop val_split_ratio or set val_split"
                )
            return "given", None
    mode = "from_train" if val_split == "auto" else val_split
    if mode == "none":
        return mode, None
    return mode, DEFAULT_RATIO[mode] if ratio is None else ratio


def val_rng(seed: int) -> np.random.Generator:
    """The generator of the validation draw: its own stream of ``seed``."""
    return np.random.default_rng([seed, _VAL_STREAM])


def pick_share(n: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of ``round(ratio * n)`` of ``n`` items (at least 1, at most
    n - 1); ``n`` must be at least 2."""
    if n < 2:
        raise DataError(f"cannot hold out a share of {n} item(s): need at least 2")
    k = min(n - 1, max(1, round(ratio * n)))
    return np.sort(rng.permutation(n)[:k])


def _largest_remainder(sizes: dict[str, int], ratio: float, total: int) -> dict[str, int]:
    """``total`` items spread over groups in proportion to their ``sizes``."""
    exact = {g: ratio * m for g, m in sizes.items()}
    out = {g: min(sizes[g], int(np.floor(x))) for g, x in exact.items()}
    order = sorted(sizes, key=lambda g: (-(exact[g] - np.floor(exact[g])), g))
    i = 0
    while sum(out.values()) < total and i < 4 * len(order) + 4:
        g = order[i % len(order)]
        if out[g] < sizes[g]:
            out[g] += 1
        i += 1
    while sum(out.values()) > total:
        g = max((g for g in out if out[g] > 0), key=lambda g: (out[g], g))
        out[g] -= 1
    return out


def stratified_pick(
    labels: Sequence[int],
    groups: Sequence[str],
    ratio: float,
    rng: np.random.Generator,
    need: Sequence[int] = (0, 1),
) -> np.ndarray:
    """Sorted positions of a ``ratio`` share of the items, per label (0 and 1) and, within
    a label, spread over its ``groups`` by largest remainder. Each label in ``need``
    keeps at least one item on both sides (fewer than 2 such items is an error); another
    label gets ``round(ratio * n)`` of its n items."""
    labels_arr = np.asarray(labels, dtype=np.int64)
    groups_arr = np.asarray(groups, dtype=object)
    picked: list[int] = []
    for label in (0, 1):
        where = np.flatnonzero(labels_arr == label)
        n = len(where)
        if label not in need:
            total = min(n, round(ratio * n))
        elif n < 2:
            kind = "normal" if label == 0 else "abnormal"
            raise DataError(
                f"cannot split the test items into validation and test: {n} {kind} item(s); "
                f"both need at least one {kind} item (add {kind} test images or use "
                "val_split: from_train)"
            )
        else:
            total = min(n - 1, max(1, round(ratio * n)))
        if total == 0:
            continue
        sizes = Counter(str(g) for g in groups_arr[where])
        per_group = _largest_remainder(dict(sorted(sizes.items())), ratio, total)
        for g, k in per_group.items():
            members = where[groups_arr[where] == g]
            picked += [int(i) for i in rng.permutation(members)[:k]]
    return np.sort(np.asarray(picked, dtype=np.int64))


def _counts(labels: np.ndarray | None, n: int) -> str:
    if labels is None:
        return f"{n} normal"
    n1 = int((labels == 1).sum())
    return f"{n - n1} normal, {n1} abnormal"


def describe_splits(ds: AnomalyDataset) -> dict[str, str]:
    """How each split of ``ds`` was made, one line each (``info["splits"]`` of the
    source, else the counts): for run facts and logs."""
    made = ds.info.get("splits") if isinstance(ds.info.get("splits"), dict) else {}
    out = {}
    val_labels = None if ds.val_labels is None else ds.val_labels.numpy()
    for name, images, labels in (
        ("train", ds.train, None),
        ("val", ds.val, val_labels),
        ("test", ds.test, ds.test_labels.numpy()),
    ):
        if images is None:
            out[name] = made.get(name, "none")
            continue
        counts = _counts(labels, len(images))
        out[name] = f"{counts}: {made[name]}" if made.get(name) else counts
    return out
