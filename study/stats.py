"""The numerical tests behind :mod:`study.hypothesis` (numpy and scipy only).

- :func:`max_t_test`: is the mean at the best group higher than at a reference group?
  A studentised max-t whose null distribution is simulated under equal means with the
  best group re-chosen in every draw, optionally with a known covariance of the group
  means (the test-set level); also the simultaneous interval of the effect and the set
  of groups not distinguishable from the best (studentised range).
- :func:`delong_components` / :func:`mean_auc_covariance`: DeLong's covariance of
  correlated AUCs that share one test set.
- :func:`stratified_permutation_rho`: Spearman rho within groups, pooled, with a
  permutation null that permutes within groups.
- :func:`spearman_ci`, :func:`holm`.

Example:
    >>> import numpy as np
    >>> y = np.array([.60, .61, .70, .71, .65, .64])
    >>> groups = np.array([1, 1, 2, 2, 4, 4])
    >>> r = max_t_test(y, groups, n_sim=4000)
    >>> r.best, r.reference, r.p_value < 0.05
    (2, 4, True)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special, stats


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment; NaN stays NaN and is not counted.

    Example:
        >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03, float("nan")])]
        [0.03, 0.06, 0.06, nan]
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(len(p), math.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(v) for v in out]


# ------------------------------------------------------------------------------ Spearman


def _row_spearman(x_ranks: np.ndarray, y_ranks: np.ndarray) -> np.ndarray:
    """Pearson correlation of ranks along the last axis (NaN where a row is constant)."""
    xc = x_ranks - x_ranks.mean(axis=-1, keepdims=True)
    yc = y_ranks - y_ranks.mean(axis=-1, keepdims=True)
    num = (xc * yc).sum(axis=-1)
    den = np.sqrt((xc * xc).sum(axis=-1) * (yc * yc).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[den <= 1e-12] = np.nan
    return out


def _resampled_ranks(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Average ranks within each row of ``values[idx]`` without sorting every row."""
    uniq, group = np.unique(values, return_inverse=True)
    n_rows, _ = idx.shape
    gid = group[idx]
    flat = (gid + np.arange(n_rows)[:, None] * len(uniq)).ravel()
    counts = np.bincount(flat, minlength=n_rows * len(uniq)).reshape(n_rows, len(uniq))
    group_rank = np.cumsum(counts, axis=1) - counts + (counts + 1) / 2.0
    return np.take_along_axis(group_rank, gid, axis=1)


def spearman_ci(
    x: np.ndarray, y: np.ndarray, *, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Spearman rho of ``x`` and ``y`` and its bootstrap 95 % percentile interval
    (resampling pairs); all NaN when either input is constant.

    Example:
        >>> import numpy as np
        >>> spearman_ci(np.arange(10.0), -np.arange(10.0), n_boot=100)
        (-1.0, -1.0, -1.0)
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    rho = float(_row_spearman(stats.rankdata(x)[None], stats.rankdata(y)[None])[0])
    if not math.isfinite(rho):
        return (math.nan,) * 3
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    boot = _row_spearman(_resampled_ranks(x, idx), _resampled_ranks(y, idx))
    boot = boot[np.isfinite(boot)]
    if len(boot) == 0:
        return round(rho, 12), math.nan, math.nan
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return round(rho, 12), float(lo), float(hi)


def stratified_permutation_rho(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, n_perm: int = 5000, seed: int = 0
) -> tuple[float, float]:
    """Pooled within-group Spearman rho of ``x`` and ``y`` and its two-sided p-value
    from permuting ``y`` within each group (exact under "within a group, x says nothing
    about y"). Returns ``(rho, p)``; NaN when no group varies in both.

    Example:
        >>> import numpy as np
        >>> x = np.arange(12.0); g = np.repeat([0, 1], 6)
        >>> rho, p = stratified_permutation_rho(x, -x, g, n_perm=2000)
        >>> rho, p < 0.01
        (-1.0, True)
    """
    x, y, groups = np.asarray(x, float), np.asarray(y, float), np.asarray(groups)
    cx, cy = np.empty(len(x)), np.empty(len(y))
    for g in np.unique(groups):
        idx = groups == g
        rx, ry = stats.rankdata(x[idx]), stats.rankdata(y[idx])
        cx[idx], cy[idx] = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float(cx @ cx) * float(cy @ cy))
    if den <= 1e-12:
        return math.nan, math.nan
    rho = float(cx @ cy) / den
    rng = np.random.default_rng(seed)
    null = np.zeros(n_perm)
    for g in np.unique(groups):
        idx = groups == g
        null += rng.permuted(np.broadcast_to(cy[idx], (n_perm, int(idx.sum()))), axis=1) @ cx[idx]
    null /= den
    p = float((1 + np.sum(np.abs(null) >= abs(rho) - 1e-12)) / (1 + n_perm))
    return round(rho, 12), p


# ---------------------------------------------------------------------------------- max-t


class _Null:
    """Null draws of the group means (equal means) and of the pooled variance, with the
    statistics derived from them memoised (they depend on the design only)."""

    def __init__(self, z: np.ndarray, s2: np.ndarray, counts: np.ndarray, cov: np.ndarray):
        self.z, self.s2, self.counts, self.cov = z, s2, counts, cov
        self._memo: dict = {}

    def pair_t(self, ref: int) -> np.ndarray:
        if ("t", ref) not in self._memo:
            self._memo["t", ref] = pair_t(self.z, self.counts, self.s2, self.cov, ref)
        return self._memo["t", ref]

    def max_t(self, ref: int) -> np.ndarray:
        """Sorted null draws of max_j t_j against ``ref``."""
        if ("max", ref) not in self._memo:
            self._memo["max", ref] = np.sort(self.pair_t(ref).max(axis=1))
        return self._memo["max", ref]

    def q_abs(self, ref: int, level: float) -> float:
        """Quantile of max_j |t_j| against ``ref`` (simultaneous intervals)."""
        if ("abs", ref, level) not in self._memo:
            t = self.pair_t(ref)
            a = np.abs(np.where(np.isfinite(t), t, 0.0)).max(axis=1)
            self._memo["abs", ref, level] = float(np.quantile(a, level))
        return self._memo["abs", ref, level]

    def q_range(self, level: float) -> float:
        """Quantile of the studentised range max_{j<k} |z_j - z_k| / se_jk."""
        if ("range", level) not in self._memo:
            k = len(self.counts)
            iu = np.triu_indices(k, 1)
            inv = 1.0 / self.counts
            dv = np.diag(self.cov)
            cdiff = (dv[:, None] + dv[None, :] - 2 * self.cov)[iu]
            var = np.multiply.outer(self.s2, (inv[:, None] + inv[None, :])[iu]) + cdiff
            r = np.abs(self.z[:, iu[0]] - self.z[:, iu[1]]) / np.sqrt(var)
            self._memo["range", level] = float(np.quantile(r.max(axis=1), level))
        return self._memo["range", level]


@functools.lru_cache(maxsize=32)
def _standard_null(counts: tuple[int, ...], df: int, n_sim: int, seed: int) -> _Null:
    """Seed-level noise only: sigma cancels in every studentised statistic, so sigma = 1
    and the draws depend on the design alone (cached)."""
    rng = np.random.default_rng(seed)
    c = np.asarray(counts, dtype=float)
    z = rng.standard_normal((n_sim, len(c))) / np.sqrt(c)
    s2 = rng.chisquare(df, n_sim) / df
    return _Null(z, s2, c, np.zeros((len(c), len(c))))


def _null(
    counts: np.ndarray, s2: float, df: int, cov: np.ndarray | None, n_sim: int, seed: int
) -> _Null:
    if cov is None:
        return _standard_null(tuple(int(c) for c in counts), df, n_sim, seed)
    rng = np.random.default_rng(seed)
    k = len(counts)
    z = math.sqrt(s2) * rng.standard_normal((n_sim, k)) / np.sqrt(counts)
    w, v = np.linalg.eigh(cov)
    z = z + (rng.standard_normal((n_sim, k)) * np.sqrt(np.clip(w, 0, None))) @ v.T
    s2s = s2 * rng.chisquare(df, n_sim) / df if df > 0 else np.zeros(n_sim)
    return _Null(z, s2s, np.asarray(counts, dtype=float), cov)


def pair_t(
    means: np.ndarray, counts: np.ndarray, s2: np.ndarray | float, cov: np.ndarray, ref: int
) -> np.ndarray:
    """t of every group against ``ref`` (``means`` may carry a leading draw axis; the
    entry of ``ref`` itself is -inf)."""
    inv = 1.0 / counts
    cdiff = np.diag(cov) + cov[ref, ref] - 2 * cov[:, ref]
    var = np.multiply.outer(np.asarray(s2, dtype=float), inv + inv[ref]) + cdiff
    diff = means - means[..., ref : ref + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = diff / np.sqrt(var)
    t[..., ref] = -np.inf
    return t


@dataclass(frozen=True)
class MaxTResult:
    """One max-t test: ``best`` (argmax of the means) against ``reference``.

    ``p_value``: P(null max-t >= observed). ``effect`` = mean[best] - mean[reference] with
    its simultaneous ``effect_ci``. ``p_reference_best``: the intersection-union p-value
    of "the reference is higher than every other group". ``best_set``: the groups not
    distinguishable from the best (studentised range at the same level)."""

    best: int
    reference: int
    statistic: float
    p_value: float
    effect: float
    effect_ci: tuple[float, float]
    p_reference_best: float
    best_set: tuple[int, ...]


@dataclass(frozen=True)
class GroupMeans:
    """Means, counts and the pooled within-group variance of values by group."""

    groups: np.ndarray
    means: np.ndarray
    counts: np.ndarray
    s2: float
    df: int

    @classmethod
    def of(cls, values: np.ndarray, groups: np.ndarray) -> GroupMeans:
        uniq, inv = np.unique(groups, return_inverse=True)
        counts = np.bincount(inv).astype(float)
        means = np.bincount(inv, weights=values) / counts
        df = int(len(values) - len(uniq))
        resid = values - means[inv]
        s2 = float(resid @ resid / df) if df > 0 else 0.0
        return cls(uniq, means, counts, s2, df)


def max_t_test(
    values: np.ndarray,
    groups: np.ndarray,
    *,
    reference: str = "last",
    cov: np.ndarray | None = None,
    level: float = 0.95,
    n_sim: int = 10000,
    seed: int = 0,
) -> MaxTResult:
    """Studentised max-t test of the best group against the ``last`` or ``first`` group
    (groups sorted), with a known covariance ``cov`` of the group means added to the
    pooled-variance part (None: groups independent, seed-level only).

    Raises ValueError when there are fewer than 2 groups or no variance at all.
    """
    gm = GroupMeans.of(np.asarray(values, float), np.asarray(groups))
    return max_t_from_means(gm, reference=reference, cov=cov, level=level, n_sim=n_sim, seed=seed)


def max_t_from_means(
    gm: GroupMeans,
    *,
    reference: str = "last",
    cov: np.ndarray | None = None,
    level: float = 0.95,
    n_sim: int = 10000,
    seed: int = 0,
) -> MaxTResult:
    """:func:`max_t_test` on precomputed group means."""
    k = len(gm.means)
    if k < 2:
        raise ValueError("need at least 2 groups")
    if gm.df == 0 and cov is None:
        raise ValueError("one value per group and no covariance: no variance")
    c = np.zeros((k, k)) if cov is None else cov
    ref = k - 1 if reference == "last" else 0
    best = int(np.argmax(gm.means))
    null = _null(gm.counts, gm.s2, gm.df, cov, n_sim, seed)
    t = pair_t(gm.means, gm.counts, gm.s2, c, ref)
    stat = float(np.max(t))
    draws = null.max_t(ref)
    p = float((1 + len(draws) - np.searchsorted(draws, stat - 1e-12)) / (1 + len(draws)))
    effect = float(gm.means[best] - gm.means[ref])
    if best == ref:
        ci = (math.nan, math.nan)
    else:
        se = _pair_se(gm, c, best, ref)
        q = null.q_abs(ref, level)
        ci = (effect - q * se, effect + q * se)
    others = [j for j in range(k) if j != ref]
    dist_df = gm.df if gm.df > 0 else np.inf
    p_ref = float(special.stdtr(dist_df, np.max(t[others])))  # = P(T_df > min(-t))
    q_r = null.q_range(level)
    keep = tuple(
        gm.groups[j].item()
        for j in range(k)
        if j == best or gm.means[best] - gm.means[j] <= q_r * _pair_se(gm, c, best, j)
    )
    return MaxTResult(
        gm.groups[best].item(), gm.groups[ref].item(), stat, p, effect, ci, p_ref, keep
    )


def _pair_se(gm: GroupMeans, cov: np.ndarray, a: int, b: int) -> float:
    var = gm.s2 * (1 / gm.counts[a] + 1 / gm.counts[b]) + cov[a, a] + cov[b, b] - 2 * cov[a, b]
    return math.sqrt(max(var, 0.0))


# ------------------------------------------------------------- test-set (DeLong) covariance


def delong_components(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components of the AUC of each row of ``scores``.

    Returns ``(v10, v01)``: per abnormal image, the share of normal images it outranks
    (ties count half); per normal image, the share of abnormal images that outrank it.
    The AUC of a row is ``v10.mean()`` (= ``v01.mean()``).

    Example:
        >>> import numpy as np
        >>> v10, v01 = delong_components(np.array([[0.1, 0.4, 0.35, 0.8]]),
        ...                              np.array([0, 0, 1, 1]))
        >>> float(v10.mean()), v10.tolist()
        (0.75, [[0.5, 1.0]])
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    pos, neg = scores[:, labels], scores[:, ~labels]
    m, n = pos.shape[1], neg.shape[1]
    r_all = stats.rankdata(scores, axis=1)
    v10 = (r_all[:, labels] - stats.rankdata(pos, axis=1)) / n
    v01 = 1.0 - (r_all[:, ~labels] - stats.rankdata(neg, axis=1)) / m
    return v10, v01


def mean_auc_covariance(
    scores: np.ndarray, labels: np.ndarray, rows_by_group: Sequence[Sequence[int]]
) -> np.ndarray:
    """Covariance over test images of the groups' mean AUCs (DeLong, paired: every row
    of ``scores`` scores the same images). ``rows_by_group[g]`` lists the rows (trials)
    whose AUCs are averaged for group g."""
    v10, v01 = delong_components(scores, labels)
    a10 = np.stack([v10[list(rows)].mean(axis=0) for rows in rows_by_group])
    a01 = np.stack([v01[list(rows)].mean(axis=0) for rows in rows_by_group])
    return np.atleast_2d(np.cov(a10)) / a10.shape[1] + np.atleast_2d(np.cov(a01)) / a01.shape[1]
