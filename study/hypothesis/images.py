"""The test-image level of the capacity test: per-image scores -> the DeLong covariance of
the per-latent_dim mean AUCs and the part of the seed variance that the test images give.

Every trial of a stratum scores the same test images, so each AUC carries the same
image-sampling error, partly shared between trials (the images) and partly not (the
model x image interaction). The seed variance measured on that one test set already
holds the interaction part; the covariance of the means holds both. The capacity test
therefore takes the training variance as the seed variance less the interaction
(:class:`study.stats.Design`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from study.stats import delong_components


@dataclass(frozen=True)
class ImageLevel:
    """What the per-image scores give one stratum: ``cov`` (K, K) the covariance over
    test images of the per-latent_dim mean AUCs; ``interaction`` (K,) the mean
    within-trial DeLong variance less the mean covariance between trials at that
    latent_dim (the test-image part of the seed variance); ``n_images``."""

    cov: np.ndarray
    interaction: np.ndarray
    n_images: int


class ScoreIndex:
    """``scores.parquet`` rows grouped by trial once (a study's table can hold millions
    of rows; every stratum then reads only its own)."""

    def __init__(self, scores: pd.DataFrame) -> None:
        self.scores = scores
        self.rows = scores.groupby(scores["trial_id"].astype(str), sort=False).indices

    def level(self, trial_ids_by_dim: Sequence[np.ndarray]) -> tuple[ImageLevel | None, str]:
        """The stratum's :class:`ImageLevel`, or None with the reason."""
        ids = [str(t) for group in trial_ids_by_dim for t in group]
        if any(t not in self.rows for t in ids):
            return None, "no per-image scores for some of these trials"
        parts = [self.scores.iloc[self.rows[t]] for t in ids]
        first = parts[0].sort_values("index", kind="stable")
        if first["index"].duplicated().any():
            by_image = first.groupby("index")["label"].nunique()
            if (by_image > 1).any():
                return None, "the trials' test labels differ"
            return None, "a trial scores the same test image twice"
        index, labels = first["index"].to_numpy(), first["label"].to_numpy()
        mat = np.empty((len(ids), len(index)))
        for i, p in enumerate(parts):
            p = p.sort_values("index", kind="stable")
            if len(p) != len(index) or not np.array_equal(p["index"].to_numpy(), index):
                return None, "the trials do not share one test set"
            if not np.array_equal(p["label"].to_numpy(), labels):
                return None, "the trials' test labels differ"
            mat[i] = p["score"].to_numpy(dtype=float)
        lab = labels > 0
        if lab.all() or not lab.any():
            return None, "the test set has one class only"
        if not np.isfinite(mat).all():
            return None, "some per-image scores are not finite"
        sizes = [len(g) for g in trial_ids_by_dim]
        return image_level(mat, lab, sizes), ""


def image_level(scores: np.ndarray, labels: np.ndarray, sizes: Sequence[int]) -> ImageLevel:
    """:class:`ImageLevel` from a (trials, images) score matrix whose rows come in
    consecutive blocks of ``sizes`` trials per latent_dim.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> lab = np.r_[np.zeros(50), np.ones(50)].astype(bool)
        >>> s = rng.normal(size=100) + lab + 0.3 * rng.normal(size=(4, 100))
        >>> lv = image_level(s, lab, [2, 2])
        >>> lv.cov.shape, bool(lv.cov[0, 1] > 0), bool((lv.interaction > 0).all())
        ((2, 2), True, True)
    """
    v10, v01 = delong_components(scores, labels)
    s = np.atleast_2d(np.cov(v10)) / v10.shape[1] + np.atleast_2d(np.cov(v01)) / v01.shape[1]
    k = len(sizes)
    weights = np.zeros((k, len(scores)))
    start = 0
    inter = np.zeros(k)
    for g, size in enumerate(sizes):
        block = slice(start, start + size)
        weights[g, block] = 1.0 / size
        if size > 1:
            sub = s[block, block]
            off = (sub.sum() - np.trace(sub)) / (size * (size - 1))
            inter[g] = max(float(np.trace(sub)) / size - off, 0.0)
        start += size
    return ImageLevel(weights @ s @ weights.T, inter, int(scores.shape[1]))
