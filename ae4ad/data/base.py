"""The one shape every data source returns, and the registry that names the sources.

A data source is a function ``load(**params) -> AnomalyDataset``. It loads everything
once, into memory, as float32 tensors in [-1, 1] of shape N x C x S x S.

Example:
    >>> import torch
    >>> from ae4ad.data.base import AnomalyDataset
    >>> ds = AnomalyDataset(
    ...     name="toy", description="two normal, two test images",
    ...     train=torch.zeros(2, 1, 8, 8), test=torch.zeros(2, 1, 8, 8),
    ...     test_labels=torch.tensor([0, 1]))
    >>> ds.image_size, ds.in_channels
    (8, 1)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


class DataError(ValueError):
    """A data set cannot be loaded as configured: the message names the path or
    parameter and what was expected."""


@dataclass
class AnomalyDataset:
    """Normal training images, labelled test images, optional masks and validation split.

    - ``train``: normal images only, N x C x S x S, float32 in [-1, 1].
    - ``test`` / ``test_labels``: images and labels (0 normal, 1 abnormal).
    - ``test_masks``: N x 1 x S x S in {0, 1} for every test image (all zero for
      normal images), or None when the data set has no pixel annotation.
    - ``val`` / ``val_labels`` / ``val_masks``: an optional validation split with the
      same conventions (``val_labels`` None means: all normal).
    - ``info``: facts about how the data were made (e.g. the phantom's factors).
    """

    name: str
    description: str
    train: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    test_masks: torch.Tensor | None = None
    val: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    val_masks: torch.Tensor | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for attr in ("train", "test", "val"):
            t = getattr(self, attr)
            if t is not None and (t.ndim != 4 or t.shape[-1] != t.shape[-2]):
                raise DataError(f"{self.name}: {attr} must be N x C x S x S, got {tuple(t.shape)}")
        if len(self.train) == 0:
            raise DataError(f"{self.name}: the training split is empty")
        if len(self.test) == 0:
            raise DataError(f"{self.name}: the test split is empty")
        if len(self.test_labels) != len(self.test):
            raise DataError(
                f"{self.name}: {len(self.test)} test images but {len(self.test_labels)} labels"
            )

    @property
    def image_size(self) -> int:
        return int(self.train.shape[-1])

    @property
    def in_channels(self) -> int:
        return int(self.train.shape[1])

    @property
    def has_masks(self) -> bool:
        return self.test_masks is not None

    def summary(self) -> dict:
        """Counts and shape, for logs and result tables."""
        labels = self.test_labels
        return {
            "dataset_name": self.name,
            "n_train": len(self.train),
            "n_test_normal": int((labels == 0).sum()),
            "n_test_abnormal": int((labels == 1).sum()),
            "n_val": 0 if self.val is None else len(self.val),
            "image_size": self.image_size,
            "in_channels": self.in_channels,
            "has_masks": self.has_masks,
        }


DATA_SOURCES: dict[str, Callable[..., AnomalyDataset]] = {}


def register_source(name: str) -> Callable:
    """Decorator: make ``load_dataset(name, **params)`` call the decorated function."""

    def wrap(fn: Callable[..., AnomalyDataset]) -> Callable[..., AnomalyDataset]:
        DATA_SOURCES[name] = fn
        return fn

    return wrap


def load_dataset(name: str, **params) -> AnomalyDataset:
    """Load a data set by source name, e.g. ``load_dataset("phantom", image_size=32)``."""
    if name not in DATA_SOURCES:
        raise DataError(
            f"unknown dataset source {name!r}; allowed: {', '.join(sorted(DATA_SOURCES))}"
        )
    loader = DATA_SOURCES[name]
    allowed = source_params(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise DataError(
            f"dataset source {name!r} has no parameter {unknown[0]!r}; "
            f"allowed: {', '.join(allowed)}"
        )
    return loader(**params)


def source_params(name: str) -> dict[str, object]:
    """The parameters a data source accepts, with their defaults."""
    if name not in DATA_SOURCES:
        raise DataError(
            f"unknown dataset source {name!r}; allowed: {', '.join(sorted(DATA_SOURCES))}"
        )
    signature = inspect.signature(DATA_SOURCES[name])
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
