"""The numerical tests behind :mod:`study.hypothesis` (numpy and scipy only).

- :func:`max_t_batch` (:func:`max_t_test` for one study): is the mean at the best group
  higher than at a reference group? A studentised max-t with per-group variances
  moderated toward a common one (:func:`moderate`, empirical Bayes as limma), optionally
  with a known covariance of the group means (the test-image level) and the part of the
  seed variance it already holds; its null is simulated from the same variance model
  under equal means with the best group re-chosen in every draw, vectorised over many
  studies. Also the simultaneous interval of the effect and the set of groups not
  distinguishable from the best (studentised range).
- :func:`delong_components` / :func:`mean_auc_covariance`: DeLong's covariance of
  correlated AUCs that share one test set.
- :func:`trend_test`: a one-sided Spearman trend with a permutation null.
- :func:`spearman_ci` (stratified bootstrap), :func:`holm`.

Example:
    >>> import numpy as np
    >>> y = np.array([.60, .61, .70, .71, .65, .64])
    >>> groups = np.array([1, 1, 2, 2, 4, 4])
    >>> r = max_t_test(y, groups, n_sim=4000)
    >>> r.best, r.reference, r.p_value < 0.05
    (2, 4, True)
"""

from __future__ import annotations

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
    x: np.ndarray,
    y: np.ndarray,
    *,
    strata: np.ndarray | None = None,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Spearman rho of ``x`` and ``y`` and its bootstrap percentile interval at
    ``level``, resampling pairs (within each stratum of ``strata`` when given, so the
    strata keep their sizes); all NaN when either input is constant.

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
    rng = np.random.default_rng(seed)
    if strata is None:
        idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    else:
        idx = np.empty((n_boot, len(x)), dtype=int)
        for g in np.unique(strata):
            pos = np.flatnonzero(np.asarray(strata) == g)
            idx[:, pos] = pos[rng.integers(0, len(pos), size=(n_boot, len(pos)))]
    boot = _row_spearman(_resampled_ranks(x, idx), _resampled_ranks(y, idx))
    boot = boot[np.isfinite(boot)]
    if len(boot) == 0:
        return round(rho, 12), math.nan, math.nan
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return round(rho, 12), float(lo), float(hi)


# ------------------------------------------------------------------------ variance model

_TRIGAMMA_X = np.geomspace(1e-6, 1e8, 6000)
_TRIGAMMA_LOG_Y = np.log(special.polygamma(1, _TRIGAMMA_X))


def trigamma_inverse(y: np.ndarray) -> np.ndarray:
    """x with trigamma(x) = y (y > 0), by interpolation on a log grid (limma's
    ``trigammaInverse`` solves the same by Newton steps).

    Example:
        >>> round(float(trigamma_inverse(special.polygamma(1, 3.0))), 4)
        3.0
    """
    ly = np.log(np.asarray(y, dtype=float))
    return np.exp(np.interp(-ly, -_TRIGAMMA_LOG_Y, np.log(_TRIGAMMA_X)))


def moderate(s2: np.ndarray, df: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-group variances moderated toward a common prior (empirical Bayes, as limma's
    ``squeezeVar``): along the last axis, a scaled inverse chi-square prior (``d0``
    degrees of freedom, scale ``s0^2``) is fitted to the log variances by moments, and
    each variance becomes ``(d0 s0^2 + df s^2) / (d0 + df)``. ``d0`` is infinite (every
    group gets the common value) when the variances spread no more than chance gives.

    ``s2``: (..., K) sample variances (ignored where ``df`` is 0); ``df``: (K,) their
    degrees of freedom. Returns ``(moderated s2, d0)``; a group with ``df`` 0 gets
    ``s0^2``. Raises ValueError when no group has ``df`` > 0.

    Example:
        >>> import numpy as np
        >>> post, d0 = moderate(np.array([1.0, 1.1, 0.9, 1.0]), np.array([9, 9, 9, 9]))
        >>> bool(np.isinf(d0)), np.round(post, 3).tolist()
        (True, [1.0, 1.0, 1.0, 1.0])
    """
    df = np.asarray(df, dtype=float)
    ok = df > 0
    if not ok.any():
        raise ValueError("no group has a variance (every df is 0)")
    x = np.maximum(np.asarray(s2, dtype=float)[..., ok], 0.0)
    med = np.median(x, axis=-1, keepdims=True)
    x = np.maximum(x, 1e-5 * np.where(med > 0, med, 1.0))
    half = df[ok] / 2
    e = np.log(x) - special.digamma(half) + np.log(half)
    emean = e.mean(axis=-1)
    if ok.sum() > 1:
        evar = e.var(axis=-1, ddof=1) - float(np.mean(special.polygamma(1, half)))
    else:
        evar = np.full(emean.shape, -1.0)
    d0 = np.where(evar > 0, 2 * trigamma_inverse(np.where(evar > 0, evar, 1.0)), np.inf)
    h0 = np.where(np.isfinite(d0), d0, 2.0) / 2
    s0 = np.exp(emean + np.where(np.isfinite(d0), special.digamma(h0) - np.log(h0), 0.0))
    # the scale by moments where the prior has a mean (d0 > 2): E[s^2] = s0^2 d0 / (d0 - 2),
    # so with d0 infinite s0^2 is the pooled variance (more efficient than the log scale)
    pooled = (x * df[ok]).sum(axis=-1) / df[ok].sum()
    s0 = np.where(d0 > 2, pooled * (1 - 2 / np.where(d0 > 2, d0, 3.0)), s0)
    full = np.zeros(np.shape(s2))
    full[..., ok] = x
    d0e, s0e = d0[..., None], s0[..., None]
    with np.errstate(invalid="ignore"):
        post = np.where(np.isfinite(d0e), (d0e * s0e + df * full) / (d0e + df), s0e)
    return post, d0


def trend_test(
    level: np.ndarray, y: np.ndarray, *, n_perm: int = 5000, seed: int = 0
) -> tuple[float, float]:
    """Spearman rho of ``y`` on the ordered ``level`` and its one-sided permutation p of
    "``y`` falls as ``level`` rises" (``y`` permuted over all values). Returns
    ``(rho, p)``; NaN when either is constant.

    Example:
        >>> import numpy as np
        >>> rho, p = trend_test(np.repeat([0, 1, 2], 3), -np.arange(9.0), n_perm=2000)
        >>> round(rho, 3), p < 0.01
        (-0.949, True)
    """
    rx = stats.rankdata(np.asarray(level, float))
    ry = stats.rankdata(np.asarray(y, float))
    cx, cy = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float(cx @ cx) * float(cy @ cy))
    if den <= 1e-12:
        return math.nan, math.nan
    rho = float(cx @ cy) / den
    perm = np.random.default_rng(seed).permuted(np.broadcast_to(cy, (n_perm, len(cy))), axis=1)
    null = perm @ cx / den
    return round(rho, 12), float((1 + np.sum(null <= rho + 1e-12)) / (1 + n_perm))


# ---------------------------------------------------------------------------------- max-t


@dataclass(frozen=True)
class GroupMeans:
    """Means, counts and within-group sample variances (NaN for a single value) of values
    by group (groups sorted)."""

    groups: np.ndarray
    means: np.ndarray
    counts: np.ndarray
    variances: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray, groups: np.ndarray) -> GroupMeans:
        uniq, inv = np.unique(groups, return_inverse=True)
        counts = np.bincount(inv).astype(float)
        means = np.bincount(inv, weights=values) / counts
        ss = np.bincount(inv, weights=(values - means[inv]) ** 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.where(counts > 1, ss / (counts - 1), np.nan)
        return cls(uniq, means, counts, var)


@dataclass(frozen=True)
class Design:
    """What the max-t tests of B studies with the same K groups know.

    ``means`` (B, K). ``s2`` (B, K): the within-group variance over seeds (NaN for a
    group with one trial), or None: no seed level, so the test is conditional on the
    trained models. ``counts`` (K,). ``cov`` (B, K, K): the covariance of the group means
    over test images (DeLong), or None. ``interaction`` (B, K): the part of ``s2`` that
    the test images give (the model x image interaction, already in ``cov``), or None."""

    means: np.ndarray
    s2: np.ndarray | None
    counts: np.ndarray
    cov: np.ndarray | None = None
    interaction: np.ndarray | None = None

    def rows(self, sl: slice) -> Design:
        def cut(a):
            return None if a is None else a[sl]

        return Design(
            self.means[sl], cut(self.s2), self.counts, cut(self.cov), cut(self.interaction)
        )

    def training_variance(self, s2: np.ndarray) -> np.ndarray:
        """Moderated seed variances less the test-image interaction (>= 0); ``s2`` is
        (B, K) or (B, draws, K)."""
        post, _ = moderate(s2, self.counts - 1)
        if self.interaction is None:
            return post
        iota = self.interaction if s2.ndim == 2 else self.interaction[:, None, :]
        return np.maximum(post - iota, 0.0)


@dataclass(frozen=True)
class MaxTBatch:
    """Max-t tests of B studies against one reference group (arrays of length B).

    ``p_value``: P(null max-t >= observed), d* re-chosen in every draw. ``effect`` =
    mean[best] - mean[reference] with its simultaneous interval at the level asked.
    ``p_reference_best``: the intersection-union p of "the reference is higher than every
    other group" (the largest pairwise one-sided p, each from the same simulated null).
    ``best_set`` (B, K): the groups not distinguishable from the best (studentised
    range at the same level)."""

    reference: int
    best: np.ndarray
    statistic: np.ndarray
    p_value: np.ndarray
    effect: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p_reference_best: np.ndarray
    best_set: np.ndarray


def max_t_batch(
    d: Design,
    refs: Sequence[int],
    *,
    level: float = 0.95,
    n_sim: int = 4000,
    seed: int | Sequence[int] = 0,
) -> list[MaxTBatch]:
    """Studentised max-t tests of the best group against each of ``refs``, for B studies.

    The statistic is ``T = max_j (m_j - m_ref) / se_j``, ``se_j^2`` = the moderated
    training variances (:func:`moderate`, less the test-image interaction) over the
    counts, plus the test-image covariance of the difference. The null is simulated from
    the same variance model with equal means (a parametric bootstrap): every draw
    re-estimates the variances, moderation included, and re-chooses the best group. The
    draws depend on ``seed`` only, not on B or on the other studies, so a study gets the
    same numbers alone or in a batch. ``seed``: one for all studies, or one per study
    (independent null draws per study: Monte Carlo errors then average out over a batch)."""
    b, k = d.means.shape
    seeds = np.broadcast_to(np.asarray(seed, dtype=np.int64), (b,))
    per_study = n_sim * max(k * (k - 1) // 2, k)
    step = max(1, 3_000_000 // per_study)
    parts = [_max_t_chunk(d.rows(slice(i, i + step)), refs, level, n_sim, seeds[i : i + step])
             for i in range(0, b, step)]  # fmt: skip
    return [
        MaxTBatch(
            refs[r],
            *(np.concatenate([getattr(p[r], f) for p in parts]) for f in _BATCH_FIELDS),
        )
        for r in range(len(refs))
    ]


_BATCH_FIELDS = ("best", "statistic", "p_value", "effect", "ci_low", "ci_high",
                 "p_reference_best", "best_set")  # fmt: skip


def _inverse_chi2_scale(nu: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Draws of nu / chi2_nu (Wilson-Hilferty, from standard normals ``z`` (B, S, K));
    1 where nu is infinite. nu (B,)."""
    nu = np.where(np.isfinite(nu), nu, 1e12)[:, None, None]
    a = 2.0 / (9.0 * nu)
    cube = np.clip(1.0 - a + z * np.sqrt(a), 0.05, None) ** 3
    return 1.0 / cube


def _null_draws(d: Design, total: np.ndarray, d0: np.ndarray, n_sim: int, seeds: np.ndarray):
    """Null group means (B, S, K) and re-estimated training variances (B, S or 1, K).

    The variances of the simulated world are drawn in every draw from their moderated
    posterior (scaled inverse chi-square with d0 + df degrees of freedom around the
    moderated value ``total``), so the null carries the uncertainty of the variances
    themselves: with few seeds a latent_dim may be noisier than its estimate says.
    Study i's draws come from ``seeds[i]`` alone."""
    b, k = d.means.shape
    n = d.counts
    df = np.maximum(n - 1, 1)
    z, w, u, chi = (np.empty((b, n_sim, k)) for _ in range(4))
    for i, sd in enumerate(seeds):
        rng = np.random.default_rng(int(sd))
        z[i], w[i], u[i] = rng.standard_normal((3, n_sim, k))
        chi[i] = rng.chisquare(df, (n_sim, k)) / df
    chi[..., n < 2] = np.nan
    if d.s2 is None:
        world = np.zeros((b, 1, k))
    else:
        world = total[:, None, :] * _inverse_chi2_scale(d0 + float(np.max(n - 1)), u)
    iota = 0.0 if d.interaction is None else d.interaction[:, None, :]
    train = np.maximum(world - iota, 0.0)
    m = z * np.sqrt(train / n)
    if d.cov is not None:
        val, vec = np.linalg.eigh(d.cov)
        root = vec * np.sqrt(np.clip(val, 0, None))[:, None, :]
        m = m + np.einsum("bsk,bjk->bsj", w, root)
    if d.s2 is None:
        return m, world
    return m, d.training_variance(np.maximum(world, iota) * chi)


def _max_t_chunk(d: Design, refs: Sequence[int], level: float, n_sim: int, seeds: np.ndarray):
    b, k = d.means.shape
    n, means = d.counts, d.means
    if d.s2 is None:
        train, total, d0 = np.zeros((b, k)), np.zeros((b, k)), np.full(b, np.inf)
    else:
        total, d0 = moderate(d.s2, n - 1)
        train = total if d.interaction is None else np.maximum(total - d.interaction, 0.0)
    cov = np.zeros((b, k, k)) if d.cov is None else d.cov
    dv = np.diagonal(cov, axis1=1, axis2=2)
    m_null, train_null = _null_draws(d, total, d0, n_sim, seeds)
    best = np.argmax(means, axis=1)
    rows = np.arange(b)
    # the studentised range, for the set of groups within reach of the best
    a, c = np.triu_indices(k, 1)
    cd = dv[:, a] + dv[:, c] - 2 * cov[:, a, c]
    with np.errstate(invalid="ignore", divide="ignore"):
        rng_null = np.abs(m_null[..., a] - m_null[..., c]) / np.sqrt(
            train_null[..., a] / n[a] + train_null[..., c] / n[c] + cd[:, None, :]
        )
    q_range = np.quantile(np.nan_to_num(rng_null, nan=0.0).max(axis=2), level, axis=1)
    se_best = np.sqrt(train[rows, best][:, None] / n[best][:, None] + train / n
                      + dv[rows, best][:, None] + dv - 2 * cov[rows, best, :])  # fmt: skip
    gap = means[rows, best][:, None] - means
    best_set = (gap <= q_range[:, None] * se_best) | (np.arange(k)[None] == best[:, None])
    out = []
    for r in refs:
        cdiff = dv + dv[:, r : r + 1] - 2 * cov[:, :, r]
        var = train / n + train[:, r : r + 1] / n[r] + cdiff
        with np.errstate(invalid="ignore", divide="ignore"):
            t = (means - means[:, r : r + 1]) / np.sqrt(var)
            t_null = (m_null - m_null[..., r : r + 1]) / np.sqrt(
                train_null / n + train_null[..., r : r + 1] / n[r] + cdiff[:, None, :]
            )
        t = np.where(np.isnan(t), -np.inf, t)
        t_null = np.where(np.isnan(t_null), -np.inf, t_null)
        t[:, r], t_null[..., r] = -np.inf, -np.inf
        stat = t.max(axis=1)
        p = (1 + np.sum(t_null.max(axis=2) >= stat[:, None] - 1e-12, axis=1)) / (1 + n_sim)
        others = np.arange(k) != r
        p_each = (1 + np.sum(t_null <= t[:, None, :] + 1e-12, axis=1)) / (1 + n_sim)
        p_ref = p_each[:, others].max(axis=1)
        absmax = np.abs(np.where(np.isfinite(t_null), t_null, 0.0)).max(axis=2)
        q_abs = np.quantile(absmax, level, axis=1)
        effect = means[rows, best] - means[:, r]
        half = q_abs * np.sqrt(var[rows, best])
        none = best == r
        lo = np.where(none, np.nan, effect - half)
        hi = np.where(none, np.nan, effect + half)
        out.append(MaxTBatch(r, best, stat, p, effect, lo, hi, p_ref, best_set))
    return out


@dataclass(frozen=True)
class MaxTResult:
    """One max-t test (:func:`max_t_test`): ``best`` (argmax of the means) against
    ``reference``, as group labels; the fields of :class:`MaxTBatch` for one study."""

    best: int
    reference: int
    statistic: float
    p_value: float
    effect: float
    effect_ci: tuple[float, float]
    p_reference_best: float
    best_set: tuple[int, ...]

    @classmethod
    def of(cls, r: MaxTBatch, i: int, groups: np.ndarray) -> MaxTResult:
        return cls(
            groups[int(r.best[i])].item(),
            groups[r.reference].item(),
            float(r.statistic[i]),
            float(r.p_value[i]),
            float(r.effect[i]),
            (float(r.ci_low[i]), float(r.ci_high[i])),
            float(r.p_reference_best[i]),
            tuple(g.item() for g in groups[r.best_set[i]]),
        )


def max_t_test(
    values: np.ndarray,
    groups: np.ndarray,
    *,
    reference: str = "last",
    level: float = 0.95,
    n_sim: int = 4000,
    seed: int = 0,
) -> MaxTResult:
    """:func:`max_t_batch` for one study of replicated values by group, against the
    ``last`` or ``first`` group (groups sorted), seed variances only.

    Raises ValueError when there are fewer than 2 groups or no group has 2 values.
    """
    gm = GroupMeans.of(np.asarray(values, float), np.asarray(groups))
    k = len(gm.means)
    if k < 2:
        raise ValueError("need at least 2 groups")
    ref = k - 1 if reference == "last" else 0
    d = Design(gm.means[None], gm.variances[None], gm.counts)
    (r,) = max_t_batch(d, [ref], level=level, n_sim=n_sim, seed=seed)
    return MaxTResult.of(r, 0, gm.groups)


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
