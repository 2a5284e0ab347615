"""The one registry of metric names: what each number a trial reports means.

Every layer that names a metric (the space schema, the results tables, the statistics,
the runner and the report) looks it up here: its ``direction`` (``max`` when higher is
better, ``min`` when lower is, None for a description with no better side), its
``unit``, a short ``label`` for tables and axes, whether it is ``bounded`` in [0, 1],
the ``split`` of the images it is measured on (``test``: choosing a model by it is
selection on test data), its ``group`` and whether the tables keep its best value over
a trial's evaluations (``best_column``). Plain Python: no torch, no numpy.

Example:
    >>> from ae4ad.metrics import METRICS, OBJECTIVES, direction, get_metric
    >>> direction("auc"), direction("recon_error_val_normal")
    ('max', 'min')
    >>> get_metric("val_auc").label, get_metric("val_auc").bounded
    ('validation AUC', True)
    >>> get_metric("latent_entropy_gaussian").unit
    'nats'
    >>> get_metric("val_auc").on_test, get_metric("auc").on_test
    (False, True)
    >>> [name for name, m in METRICS.items() if m.best_column]
    ['auc', 'ap', 'pixel_ap']
    >>> "dice_threshold" in METRICS, "dice_threshold" in OBJECTIVES
    (True, False)
    >>> get_metric("acu")
    Traceback (most recent call last):
    ...
    KeyError: "unknown metric 'acu'; did you mean 'auc'?"
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "FINITE_WORST",
    "GROUPS",
    "METRICS",
    "OBJECTIVES",
    "Metric",
    "direction",
    "get_metric",
    "names",
    "suggest",
]

SCORE_UNIT = "score"  # the image anomaly score: l2, l1 or 1 - SSIM, as training.score says

FINITE_WORST = 1e30
"""The magnitude of :meth:`Metric.worst` with ``finite=True`` for an unbounded metric
(schedulers and Optuna take no infinities)."""

Split = Literal["train", "val", "test"]
Group = Literal["detection", "pixel", "reconstruction", "latent", "data", "training"]
GROUPS: tuple[str, ...] = ("detection", "pixel", "reconstruction", "latent", "data", "training")
"""The groups of metrics: image-level detection, pixel-level localisation, reconstruction
errors and mean scores, statistics of the training latents, statistics of the training
images themselves, and the training loss."""


@dataclass(frozen=True)
class Metric:
    """One metric.

    - ``name``: as in the records and tables;
    - ``direction``: ``max`` | ``min`` (which way is better), None for a description
      with no better side (not an objective);
    - ``label``: for tables and axes; ``unit``: "" for a ratio;
    - ``bounded``: its values lie in [0, 1];
    - ``split``: the images it is measured on: ``train`` (the normal training images, or
      the training loss), ``val`` (the validation split, labels included) or ``test``
      (test images or test labels: choosing a model by it selects on test data);
    - ``group``: one of :data:`GROUPS`;
    - ``best_column``: trials.parquet also holds ``best_<name>``, its best value over the
      trial's evaluations;
    - ``description``: one sentence.
    """

    name: str
    direction: Literal["max", "min"] | None
    label: str
    unit: str = ""
    bounded: bool = False
    description: str = ""
    split: Split = "test"
    group: Group = "detection"
    best_column: bool = False

    @property
    def objective(self) -> bool:
        """Whether a scheduler or a search may optimise it (it has a direction)."""
        return self.direction is not None

    @property
    def on_test(self) -> bool:
        """Whether it reads the test set: optimising it is selection on test data.

        >>> get_metric("best_dice").on_test, get_metric("recon_error_val_normal").on_test
        (True, False)
        >>> get_metric("latent_entropy_gaussian").on_test  # the training latents
        False
        """
        return self.split == "test"

    @property
    def axis_title(self) -> str:
        """``label (unit)``, or the label alone for a ratio.

        >>> get_metric("latent_entropy_knn").axis_title, get_metric("auc").axis_title
        ('scale-free k-NN latent entropy (nats)', 'AUC')
        """
        return f"{self.label} ({self.unit})" if self.unit else self.label

    def worst(self, mode: Literal["max", "min"] | None = None, *, finite: bool = False) -> float:
        """The worst value when ``mode`` (default: the metric's direction) says which way
        is better: the bound on the wrong side for a bounded metric, else an infinity, or
        :data:`FINITE_WORST` with that sign when ``finite``. ValueError for a metric
        without a direction and no ``mode``.

        >>> get_metric("auc").worst(), get_metric("train_loss").worst()
        (0.0, inf)
        >>> get_metric("train_loss").worst(finite=True), get_metric("auc").worst("min")
        (1e+30, 1.0)
        """
        mode = mode or self.direction
        if mode not in ("max", "min"):
            raise ValueError(f"metric {self.name!r} has no direction; pass mode='max' or 'min'")
        if self.bounded:
            return 0.0 if mode == "max" else 1.0
        big = FINITE_WORST if finite else math.inf
        return -big if mode == "max" else big

    def best(self, values: Iterable[object]) -> float | None:
        """The best finite number of ``values`` by the metric's direction (None when
        there is none; ValueError for a metric without a direction).

        >>> get_metric("auc").best([0.5, None, float("nan"), 0.75, "n/a"])
        0.75
        >>> get_metric("train_loss").best([0.3, 0.1]), get_metric("auc").best([])
        (0.1, None)
        """
        if self.direction is None:
            raise ValueError(f"metric {self.name!r} has no direction, hence no best value")
        numbers = [
            float(v)
            for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ]
        if not numbers:
            return None
        return max(numbers) if self.direction == "max" else min(numbers)


def _m(*args, **kwargs) -> tuple[str, Metric]:
    metric = Metric(*args, **kwargs)
    return metric.name, metric


_LATENT = dict(split="train", group="latent")
_RECON = dict(group="reconstruction")

METRICS: dict[str, Metric] = dict(
    [
        _m(
            "auc",
            "max",
            "AUC",
            bounded=True,
            best_column=True,
            description="image AUROC on the test set",
        ),
        _m(
            "ap",
            "max",
            "AP",
            bounded=True,
            best_column=True,
            description="image average precision on the test set",
        ),
        _m(
            "val_auc",
            "max",
            "validation AUC",
            bounded=True,
            split="val",
            description="image AUROC on the validation split (needs abnormal validation images)",
        ),
        _m(
            "val_ap",
            "max",
            "validation AP",
            bounded=True,
            split="val",
            description="image average precision on the validation split",
        ),
        _m(
            "pixel_ap",
            "max",
            "pixel AP",
            bounded=True,
            group="pixel",
            best_column=True,
            description="pixel average precision",
        ),
        _m("pixel_auc", "max", "pixel AUC", bounded=True, group="pixel", description="pixel AUROC"),
        _m(
            "best_dice",
            "max",
            "best Dice",
            bounded=True,
            group="pixel",
            description="pixel Dice at the validation-chosen (else test-optimal) threshold",
        ),
        _m(
            "dice_threshold",
            None,
            "Dice threshold",
            SCORE_UNIT,
            group="pixel",
            description="the anomaly-map threshold of best_dice (dice_threshold_source says "
            "whether the validation split or the test set chose it)",
        ),
        _m(
            "mean_score_normal",
            "min",
            "mean score, normal",
            SCORE_UNIT,
            description="mean anomaly score of the normal test images",
            **_RECON,
        ),
        _m(
            "mean_score_abnormal",
            "max",
            "mean score, abnormal",
            SCORE_UNIT,
            description="mean anomaly score of the abnormal test images",
            **_RECON,
        ),
        _m(
            "recon_error_train_normal",
            "min",
            "reconstruction error, training images",
            SCORE_UNIT,
            split="train",
            description="mean anomaly score of the (normal) training images",
            **_RECON,
        ),
        _m(
            "recon_error_val_normal",
            "min",
            "reconstruction error, validation normal",
            SCORE_UNIT,
            split="val",
            description="mean anomaly score of the normal validation images (label-free)",
            **_RECON,
        ),
        _m(
            "recon_error_test_normal",
            "min",
            "reconstruction error, test normal",
            SCORE_UNIT,
            description="mean anomaly score of the normal test images",
            **_RECON,
        ),
        _m(
            "recon_error_test_abnormal",
            "max",
            "reconstruction error, test abnormal",
            SCORE_UNIT,
            description="mean anomaly score of the abnormal test images",
            **_RECON,
        ),
        _m(
            "latent_entropy_gaussian",
            "max",
            "scale-free Gaussian latent entropy",
            "nats",
            description="scale-free Gaussian (Ledoit-Wolf) entropy of the training latents",
            **_LATENT,
        ),
        _m(
            "latent_entropy_knn",
            "max",
            "scale-free k-NN latent entropy",
            "nats",
            description="scale-free Kozachenko-Leonenko entropy of the training latents",
            **_LATENT,
        ),
        _m(
            "latent_effective_rank",
            "max",
            "effective rank of the latents",
            "dimensions",
            description="exp of the entropy of the normalised eigenvalues of the training "
            "latents' covariance",
            **_LATENT,
        ),
        _m(
            "latent_participation_ratio",
            "max",
            "participation ratio of the latents",
            "dimensions",
            description="(sum of eigenvalues)^2 / sum of squared eigenvalues of the training "
            "latents' covariance",
            **_LATENT,
        ),
        _m(
            "latent_intrinsic_dim",
            "max",
            "intrinsic dimension of the latents",
            "dimensions",
            description="TwoNN estimate on the training latents",
            **_LATENT,
        ),
        _m(
            "image_intrinsic_dim_twonn",
            None,
            "intrinsic dimension of the training images (TwoNN)",
            "dimensions",
            split="train",
            group="data",
            description="TwoNN estimate on the training images (final record only)",
        ),
        _m(
            "image_intrinsic_dim_mle",
            None,
            "intrinsic dimension of the training images (MLE)",
            "dimensions",
            split="train",
            group="data",
            description="Levina-Bickel MLE on the training images (final record only)",
        ),
        _m(
            "known_dim",
            None,
            "known dimension of the normal images",
            "dimensions",
            split="train",
            group="data",
            description="the dimension of the manifold the normal images lie on, where the "
            "data set knows it (the phantom with a finite texture_rank, docs/phantom.md); "
            "empty otherwise (final record only)",
        ),
        _m(
            "train_loss",
            "min",
            "training loss",
            "loss",
            split="train",
            group="training",
            description="mean loss of the last epoch",
        ),
    ]
)
"""Every metric a trial reports, in the order tables list them."""

OBJECTIVES: tuple[str, ...] = tuple(name for name, m in METRICS.items() if m.objective)
"""The metrics a scheduler (ASHA) and the Optuna search may optimise: those with a
direction."""


def names(group: str | None = None, *, objective: bool | None = None) -> tuple[str, ...]:
    """The registered names, in registry order, of ``group`` (all groups when None) and,
    when ``objective`` is given, only those that are (True) or are not (False) objectives.

    >>> names("latent")
    ('latent_entropy_gaussian', 'latent_entropy_knn', 'latent_effective_rank', \
'latent_participation_ratio', 'latent_intrinsic_dim')
    >>> names("data", objective=False)
    ('image_intrinsic_dim_twonn', 'image_intrinsic_dim_mle', 'known_dim')
    """
    if group is not None and group not in GROUPS:
        raise KeyError(f"unknown metric group {group!r}; known: {', '.join(GROUPS)}")
    return tuple(
        name
        for name, m in METRICS.items()
        if (group is None or m.group == group) and (objective is None or m.objective == objective)
    )


def suggest(name: str, names: tuple[str, ...] | list[str] = OBJECTIVES) -> str | None:
    """The closest of ``names`` to a mistyped ``name``, or None.

    >>> suggest("recon_error_val")
    'recon_error_val_normal'
    """
    close = difflib.get_close_matches(str(name), list(names), n=1, cutoff=0.6)
    return close[0] if close else None


def get_metric(name: str) -> Metric:
    """The registry entry of ``name``; KeyError (with the closest name) when unknown."""
    try:
        return METRICS[name]
    except KeyError:
        close = suggest(name, list(METRICS))
        hint = f"did you mean {close!r}?" if close else "known: " + ", ".join(METRICS)
        raise KeyError(f"unknown metric {name!r}; {hint}") from None


def direction(name: str) -> Literal["max", "min"] | None:
    """``max`` when higher values of ``name`` are better, ``min`` when lower are, None
    for a description without a better side."""
    return get_metric(name).direction
