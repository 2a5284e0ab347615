"""The one registry of metric names: what each number a trial reports means.

Every layer that names a metric (the space schema, the results tables, the statistics,
the runner and the report) looks it up here: its ``direction`` (``max`` when higher is
better, ``min`` when lower is), its ``unit``, a short ``label`` for tables and axes, and
whether it is ``bounded`` in [0, 1]. Plain Python: no torch, no numpy.

Example:
    >>> from ae4ad.metrics import METRICS, direction, get_metric
    >>> direction("auc"), direction("recon_error_val_normal")
    ('max', 'min')
    >>> get_metric("val_auc").label, get_metric("val_auc").bounded
    ('validation AUC', True)
    >>> get_metric("latent_entropy_gaussian").unit
    'nats'
    >>> get_metric("acu")
    Traceback (most recent call last):
    ...
    KeyError: "unknown metric 'acu'; did you mean 'auc'?"
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "METRICS",
    "OBJECTIVES",
    "Metric",
    "direction",
    "get_metric",
    "suggest",
]

SCORE_UNIT = "score"  # the image anomaly score: l2, l1 or 1 - SSIM, as training.score says


@dataclass(frozen=True)
class Metric:
    """One metric: ``name`` as in the records and tables; ``direction`` max | min (which
    way is better); ``unit`` ("" for a ratio); ``label`` for tables and axes; ``bounded``
    when its values lie in [0, 1]; ``description`` in one sentence."""

    name: str
    direction: Literal["max", "min"]
    label: str
    unit: str = ""
    bounded: bool = False
    description: str = ""

    def worst(self) -> float:
        """The worst value: the bound on the wrong side for a bounded metric, else an
        infinity.

        >>> get_metric("auc").worst(), get_metric("train_loss").worst()
        (0.0, inf)
        """
        if self.bounded:
            return 0.0 if self.direction == "max" else 1.0
        return float("-inf") if self.direction == "max" else float("inf")


def _m(*args, **kwargs) -> tuple[str, Metric]:
    metric = Metric(*args, **kwargs)
    return metric.name, metric


METRICS: dict[str, Metric] = dict(
    [
        _m("auc", "max", "AUC", bounded=True, description="image AUROC on the test set"),
        _m("ap", "max", "AP", bounded=True, description="image average precision on the test set"),
        _m(
            "val_auc",
            "max",
            "validation AUC",
            bounded=True,
            description="image AUROC on the validation split (needs abnormal validation images)",
        ),
        _m(
            "val_ap",
            "max",
            "validation AP",
            bounded=True,
            description="image average precision on the validation split",
        ),
        _m("pixel_ap", "max", "pixel AP", bounded=True, description="pixel average precision"),
        _m("pixel_auc", "max", "pixel AUC", bounded=True, description="pixel AUROC"),
        _m(
            "best_dice",
            "max",
            "best Dice",
            bounded=True,
            description="pixel Dice at the validation-chosen (else test-optimal) threshold",
        ),
        _m("train_loss", "min", "training loss", "loss", description="mean loss of the last epoch"),
        _m(
            "recon_error_train_normal",
            "min",
            "reconstruction error, training images",
            SCORE_UNIT,
            description="mean anomaly score of the (normal) training images",
        ),
        _m(
            "recon_error_val_normal",
            "min",
            "reconstruction error, validation normal",
            SCORE_UNIT,
            description="mean anomaly score of the normal validation images (label-free)",
        ),
        _m(
            "recon_error_test_normal",
            "min",
            "reconstruction error, test normal",
            SCORE_UNIT,
            description="mean anomaly score of the normal test images",
        ),
        _m(
            "recon_error_test_abnormal",
            "max",
            "reconstruction error, test abnormal",
            SCORE_UNIT,
            description="mean anomaly score of the abnormal test images",
        ),
        _m(
            "mean_score_normal",
            "min",
            "mean score, normal",
            SCORE_UNIT,
            description="mean anomaly score of the normal test images",
        ),
        _m(
            "mean_score_abnormal",
            "max",
            "mean score, abnormal",
            SCORE_UNIT,
            description="mean anomaly score of the abnormal test images",
        ),
        _m(
            "latent_entropy_gaussian",
            "max",
            "Gaussian latent entropy",
            "nats",
            description="scale-free Gaussian (Ledoit-Wolf) entropy of the training latents",
        ),
        _m(
            "latent_entropy_knn",
            "max",
            "k-NN latent entropy",
            "nats",
            description="scale-free Kozachenko-Leonenko entropy of the training latents",
        ),
        _m(
            "latent_effective_rank",
            "max",
            "effective rank of the latents",
            "dimensions",
        ),
        _m(
            "latent_participation_ratio",
            "max",
            "participation ratio of the latents",
            "dimensions",
        ),
        _m(
            "latent_intrinsic_dim",
            "max",
            "intrinsic dimension of the latents",
            "dimensions",
            description="TwoNN estimate on the training latents",
        ),
    ]
)
"""Every metric a trial reports, in the order tables list them."""

OBJECTIVES: tuple[str, ...] = tuple(METRICS)
"""The metrics a scheduler (ASHA) and the Optuna search may optimise."""


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


def direction(name: str) -> Literal["max", "min"]:
    """``max`` when higher values of ``name`` are better, else ``min``."""
    return get_metric(name).direction
