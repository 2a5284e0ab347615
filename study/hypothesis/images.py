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
    """``scores.parquet`` rows sorted by trial and image once (a study's table can hold
    millions of rows; every stratum then reads only its own slices)."""

    def __init__(self, scores: pd.DataFrame) -> None:
        codes, names = pd.factorize(scores["trial_id"].astype(str))
        index = scores["index"].to_numpy()
        order = np.lexsort((index, codes))
        self.index = index[order]
        self.label = scores["label"].to_numpy()[order]
        self.score = pd.to_numeric(scores["score"], errors="coerce").to_numpy(float)[order]
        bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
        self.rows = {str(t): (bounds[i], bounds[i + 1]) for i, t in enumerate(names)}

    def level(self, trial_ids_by_dim: Sequence[np.ndarray]) -> tuple[ImageLevel | None, str]:
        """The stratum's :class:`ImageLevel`, or None with the reason."""
        ids = [str(t) for group in trial_ids_by_dim for t in group]
        if any(t not in self.rows for t in ids):
            return None, "no per-image scores for some of these trials"
        a, b = self.rows[ids[0]]
        index, labels = self.index[a:b], self.label[a:b]
        if len(np.unique(index)) < len(index):
            same = pd.DataFrame(dict(i=index, y=labels)).groupby("i")["y"].nunique()
            if (same > 1).any():
                return None, "the trials' test labels differ"
            return None, "a trial scores the same test image twice"
        mat = np.empty((len(ids), len(index)))
        for row, t in enumerate(ids):
            a, b = self.rows[t]
            if b - a != len(index) or not np.array_equal(self.index[a:b], index):
                return None, "the trials do not share one test set"
            if not np.array_equal(self.label[a:b], labels):
                return None, "the trials' test labels differ"
            mat[row] = self.score[a:b]
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
