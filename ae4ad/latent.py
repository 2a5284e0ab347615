"""Latent-entropy and intrinsic-dimension estimators for autoencoder latents and images.

Every function takes an (n, d) array ``z`` (numpy array, nested list or torch tensor; a
tensor is read with ``.detach().cpu().numpy()``) of n points in d dimensions, and
returns a float. Degenerate input (too few points, constant or non-finite values, a
covariance that cannot carry the estimate) gives ``float('nan')``, never an exception
and never ``-inf``; ``latent_statistics`` says why in ``latent_statistics_reason``.
Only a wrong argument (wrong number of array dimensions, a parameter out of range)
raises ``ValueError``.

Which numbers can be compared across trials
-------------------------------------------
An autoencoder's latent code has an arbitrary scale: multiplying the encoder's last
layer by c multiplies z by c and adds ``d * log(c)`` to any differential entropy. The
scale-free estimators below give the same value for ``z`` and ``c * z`` (c > 0), so
they can be compared across trials; the raw differential entropies cannot.

==============================================  ====================  =================
estimator                                       invariant to z -> cz  unit
==============================================  ====================  =================
``gaussian_entropy(z)`` (normalize=True)        yes                   nats
``knn_entropy(z)`` (normalize=True)             yes                   nats
``effective_rank(z)``                           yes                   dimensions
``participation_ratio(z)``                      yes                   dimensions
``twonn_dimension(z)``                          yes                   dimensions
``mle_dimension(z)``                            yes                   dimensions
``gaussian_entropy(z, normalize=False)``        no (+ d log c)        nats
``knn_entropy(z, normalize=False)``             no (+ d log c)        nats
==============================================  ====================  =================

Normalisation (``normalize=True`` and ``normalize_latents``): z is centred and divided
by the single global scale ``s = sqrt(total variance / d)`` (the root-mean-square of the
per-coordinate standard deviations, population variance), so the normalised data have
total variance d. Directions keep their relative scales, so correlations and
anisotropy still count, and an isotropic Gaussian of any variance normalises to about
N(0, I), whose entropy is ``0.5 * d * log(2 * pi * e)`` (about 1.419 nats per dimension).
Both entropies satisfy ``H(z / s) = H(z) - d * log(s)`` exactly, and the raw values are
computed that way (on data first rescaled by an exact power of two), so neither very
large nor very small latents overflow.

``latent_statistics(z)`` returns the scale-free ones under the results tables' names.

Example:
    >>> import numpy as np
    >>> from ae4ad.latent import gaussian_entropy, latent_statistics
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(2000, 8)) @ rng.normal(size=(8, 8))
    >>> stats = latent_statistics(z)
    >>> stats10 = latent_statistics(10 * z)
    >>> all(abs(stats[k] - stats10[k]) < 1e-6 * abs(stats[k]) for k in stats
    ...     if k != "latent_statistics_reason")
    True
    >>> raw, raw10 = gaussian_entropy(z, normalize=False), gaussian_entropy(10 * z, normalize=False)
    >>> bool(abs(raw10 - raw - 8 * np.log(10)) < 1e-6)
    True
    >>> stats["latent_statistics_reason"] is None
    True
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import sklearn
from scipy.spatial import cKDTree
from scipy.special import digamma, gammaln
from sklearn.covariance import ledoit_wolf

__all__ = [
    "DEFAULT_LATENT_DIM_CANDIDATES",
    "elbow_latent_dim",
    "effective_rank",
    "gaussian_entropy",
    "image_intrinsic_dimension",
    "knn_entropy",
    "latent_statistics",
    "mle_dimension",
    "normalize_latents",
    "participation_ratio",
    "predict_latent_dim_from_intrinsic_dim",
    "twonn_dimension",
]

DEFAULT_LATENT_DIM_CANDIDATES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)

#: Covariance eigenvalues below this fraction of the largest one count as zero (standard
#: deviations below 1e-6 of the widest axis): float32 rounding of an exactly dependent
#: coordinate stays below it, genuinely small but real directions stay above it.
RANK_RTOL = 1e-12

#: Jitter (in units of the data scale ``s``) added before the kNN entropy when k + 1 or
#: more points coincide, so no k-th neighbour distance is zero.
KNN_JITTER = 1e-6

#: Dimensions up to this use a k-d tree for neighbour search; above it, brute force.
_KDTREE_MAX_DIM = 10

#: Spare brute-force candidates per point beyond the k needed.
_EXTRA_CANDIDATES = 2

_Result = tuple[float, "str | None"]
_NAN = float("nan")


# --------------------------------------------------------------------------- helpers


def _to_numpy(x: Any) -> np.ndarray:
    """A numpy view of ``x`` (torch tensors via ``.detach().cpu().numpy()``)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"expected a numeric array, got dtype {arr.dtype}")
    return arr


def _as_points(z: Any, name: str = "z") -> np.ndarray:
    """``z`` as a 2-D array (n, d) in its own float dtype (float32 or float64)."""
    arr = _to_numpy(z)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (n, d), got shape {tuple(arr.shape)}"
        )
    if arr.dtype != np.float32:
        arr = arr.astype(np.float64, copy=False)
    return arr


def _check_basic(x: np.ndarray, min_points: int = 3) -> str | None:
    """Reason why ``x`` (n, d) cannot give any estimate, or None."""
    n, d = x.shape
    if d == 0:
        return "z has zero columns"
    if n < min_points:
        return f"only {n} points (need at least {min_points})"
    if not np.isfinite(x).all():
        return "z contains NaN or inf values"
    return None


def _pow2_rescaled(x: np.ndarray, keep_float32: bool = False) -> tuple[np.ndarray, int]:
    """``x`` times ``2**-e``, with e the binary exponent of max|x|, and e.

    Scaling by a power of two is exact, so duplicates and ties survive, and it keeps
    squares of very large or very small data from overflowing or underflowing. The
    result is float64, or float32 for float32 input with ``keep_float32``.
    """
    if not (keep_float32 and x.dtype == np.float32):
        x = x.astype(np.float64, copy=False)
    top = float(np.max(np.abs(x))) if x.size else 0.0
    if top == 0.0 or not math.isfinite(top):
        return x, 0
    e = math.frexp(top)[1]
    return (x if e == 0 else np.ldexp(x, np.int32(-e)).astype(x.dtype, copy=False)), e


def _scale(xc: np.ndarray) -> float:
    """Global scale sqrt(total variance / d) of centred data ``xc``."""
    n, d = xc.shape
    return float(np.sqrt(np.einsum("ij,ij->", xc, xc) / (n * d)))


def _subsample(x: np.ndarray, max_points: int | None, seed: int) -> np.ndarray:
    if max_points is not None and x.shape[0] > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(x.shape[0], max_points, replace=False))
        return x[idx]
    return x


def _check_max_points(max_points: int | None) -> None:
    if max_points is not None and (not isinstance(max_points, int | np.integer) or max_points < 3):
        raise ValueError(f"max_points must be None or an integer >= 3, got {max_points!r}")


def _covariance_eigenvalues(xc: np.ndarray) -> np.ndarray:
    """Eigenvalues (ascending, clipped at 0) of the population covariance of centred data."""
    cov = (xc.T @ xc) / xc.shape[0]
    return np.clip(np.linalg.eigvalsh(cov), 0.0, None)


def _numerical_rank(eigenvalues: np.ndarray) -> int:
    top = float(eigenvalues.max()) if eigenvalues.size else 0.0
    if top <= 0.0:
        return 0
    return int(np.count_nonzero(eigenvalues > RANK_RTOL * top))


def _nearest_distances(x: np.ndarray, k: int) -> np.ndarray:
    """Sorted Euclidean distances (n, k) from each point to its k nearest other points.

    Up to 10 dimensions: a k-d tree (exact). Above: a brute-force Gram matrix of the
    centred data in the input's float precision (float32 stays float32, half the cost
    for images) gives ``k + 2`` candidates per point; rows whose candidates are so close
    that rounding in ``|a|^2 + |b|^2 - 2 a.b`` could matter (squared distance below
    ``1e4 * sqrt(d) * eps * (|a|^2 + |b|^2)``, e.g. duplicates) get their candidate
    distances recomputed exactly from float64 differences.
    """
    n, d = x.shape
    if d <= _KDTREE_MAX_DIM:
        x64 = x.astype(np.float64, copy=False)
        dist, _ = cKDTree(x64).query(x64, k=k + 1, workers=1)
        return np.asarray(dist, dtype=np.float64).reshape(n, k + 1)[:, 1:]
    work = x - x.mean(axis=0, dtype=np.float64).astype(x.dtype)
    sq = np.einsum("ij,ij->i", work, work).astype(np.float64)
    risk_factor = 1e4 * math.sqrt(d) * float(np.finfo(work.dtype).eps)
    n_cand = min(k + _EXTRA_CANDIDATES, n - 1)
    out = np.empty((n, k), dtype=np.float64)
    rows_gram = max(1, min(n, (1 << 22) // n))
    for start in range(0, n, rows_gram):
        stop = min(n, start + rows_gram)
        rows = np.arange(start, stop)
        d2 = (work[start:stop] @ work.T).astype(np.float64, copy=False)
        d2 *= -2.0
        d2 += sq[rows, None]
        d2 += sq[None, :]
        d2[rows - start, rows] = np.inf
        cand = np.argpartition(d2, n_cand - 1, axis=1)[:, :n_cand]
        cd2 = np.take_along_axis(d2, cand, axis=1)
        at_risk = np.any(cd2 < risk_factor * (sq[rows, None] + sq[cand]), axis=1)
        cd2 = np.sqrt(np.clip(cd2, 0.0, None))
        risky = np.flatnonzero(at_risk)
        chunk = max(1, (1 << 23) // (n_cand * d))
        for s2 in range(0, risky.size, chunk):
            local = risky[s2 : s2 + chunk]
            diff = x[cand[local]].astype(np.float64) - x[start + local, None, :].astype(np.float64)
            cd2[local] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
        cd2.sort(axis=1)
        out[start:stop] = cd2[:, :k]
    return out


def _unique_rows(x: np.ndarray) -> np.ndarray:
    """``x`` without repeated rows (first occurrences, original order; exact equality)."""
    x = np.ascontiguousarray(x)
    seen: set[bytes] = set()
    keep = []
    for i in range(x.shape[0]):
        key = hashlib.blake2b((x[i] + 0.0).data, digest_size=16).digest()  # -0.0 == 0.0
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return x if len(keep) == x.shape[0] else x[np.asarray(keep)]


def _join(reasons: Sequence[str | None]) -> str | None:
    kept = [r for r in reasons if r]
    return "; ".join(dict.fromkeys(kept)) if kept else None


# ------------------------------------------------------------------ normalisation


def normalize_latents(z: Any) -> tuple[np.ndarray, float]:
    """Centre ``z`` and divide it by ``s = sqrt(total variance / d)``; return (z / s, s).

    The result has mean 0 and total (population) variance d, and is the same for ``z``
    and ``c * z``. Constant or non-finite data give ``s = nan`` and an all-NaN array.

    Example:
        >>> import numpy as np
        >>> zn, s = normalize_latents(np.array([[0.0, 0.0], [2.0, 4.0]]))
        >>> np.round(zn, 4).tolist(), round(s, 4)
        ([[-0.6325, -1.2649], [0.6325, 1.2649]], 1.5811)
    """
    x = _as_points(z)
    if _check_basic(x, min_points=1) is None:
        xn, log_s, reason = _normalized(x)
        if reason is None:
            return xn, math.exp(log_s)
    return np.full(x.shape, np.nan), _NAN


def _normalized(x: np.ndarray) -> tuple[np.ndarray, float, str | None]:
    """(normalised data, log of the scale s, reason); x must be finite with n >= 1."""
    x2, e = _pow2_rescaled(x)
    xc = x2 - x2.mean(axis=0)
    s2 = _scale(xc)
    if not s2 > 0.0:
        return xc, _NAN, "z is constant (zero variance)"
    return xc / s2, math.log(s2) + e * math.log(2.0), None


# ---------------------------------------------------------------------- entropies


def _gaussian_entropy(x: np.ndarray, normalize: bool) -> _Result:
    reason = _check_basic(x)
    if reason:
        return _NAN, reason
    n, d = x.shape
    if n <= d:
        return _NAN, f"gaussian entropy needs n > d points, got n={n}, d={d}"
    xn, log_s, reason = _normalized(x)
    if reason:
        return _NAN, reason
    with sklearn.config_context(skip_parameter_validation=True):
        cov, _ = ledoit_wolf(xn, assume_centered=True)
    eig = np.linalg.eigvalsh(np.atleast_2d(cov))
    if not np.all(eig > 0.0):
        return _NAN, "shrinkage covariance is not positive definite"
    value = 0.5 * (d * math.log(2.0 * math.pi * math.e) + float(np.sum(np.log(eig))))
    if not normalize:  # Ledoit-Wolf is scale-equivariant: Sigma(s z) = s^2 Sigma(z)
        value += d * log_s
    return (value, None) if np.isfinite(value) else (_NAN, "gaussian entropy overflowed")


def gaussian_entropy(z: Any, normalize: bool = True) -> float:
    """Differential entropy (nats) of a Gaussian with the Ledoit-Wolf covariance of z.

    ``0.5 * logdet(2 * pi * e * Sigma)`` with Sigma the Ledoit-Wolf shrinkage estimate
    (``sklearn.covariance.ledoit_wolf``). ``normalize=True`` first applies
    ``normalize_latents`` (invariant to z -> c z); ``normalize=False`` is the raw
    estimate, computed as the normalised one plus ``d * log(s)`` (Ledoit-Wolf is
    scale-equivariant, so this is exact and cannot overflow). Needs n > d points; a
    rank-deficient covariance stays finite thanks to the shrinkage. Constant, non-finite
    or too small input gives NaN.

    Example:
        >>> import numpy as np
        >>> z = np.random.default_rng(0).normal(size=(5000, 2))
        >>> round(gaussian_entropy(z, normalize=False), 1)  # N(0, I): log(2 pi e) = 2.84
        2.8
    """
    return _gaussian_entropy(_as_points(z), normalize)[0]


def _knn_entropy(
    x: np.ndarray, k: int, normalize: bool, max_points: int | None, seed: int
) -> _Result:
    _check_k(k, 1)
    _check_max_points(max_points)
    reason = _check_basic(x, min_points=max(3, k + 2))
    if reason:
        return _NAN, reason
    xn, log_s, reason = _normalized(x)
    if reason:
        return _NAN, reason
    value, note, _ = _knn_entropy_core(_subsample(xn, max_points, seed), k, seed)
    if not normalize:  # all distances scale with s
        value += x.shape[1] * log_s
    return value, note


def _knn_entropy_core(
    data: np.ndarray, k: int, seed: int
) -> tuple[float, str | None, np.ndarray | None]:
    """KL estimate on normalised data; also returns the distances
    (n, max(k, 2)) to the nearest neighbours of the un-jittered data, when computed."""
    n, d = data.shape
    rank = _numerical_rank(_covariance_eigenvalues(data - data.mean(axis=0)))
    if rank < d:
        return (
            _NAN,
            f"knn entropy undefined: the {n} points span only {rank} of {d} dimensions",
            None,
        )
    dist = _nearest_distances(data, max(k, 2))
    eps = dist[:, k - 1]
    note = None
    if np.any(eps <= 0.0):
        n_zero = int(np.count_nonzero(eps <= 0.0))
        rng = np.random.default_rng(seed)
        jittered = data + rng.normal(scale=KNN_JITTER, size=data.shape)
        eps = _nearest_distances(jittered, k)[:, k - 1]
        note = (
            f"knn entropy: {n_zero} points had {k} or more identical copies; "
            f"jittered by {KNN_JITTER:g} x the data scale"
        )
        if np.any(eps <= 0.0):
            return _NAN, note + " and distances were still zero", dist
    log_unit_ball = 0.5 * d * math.log(math.pi) - float(gammaln(0.5 * d + 1.0))
    value = float(digamma(n)) - float(digamma(k)) + log_unit_ball + d * float(np.mean(np.log(eps)))
    return (value, note, dist) if np.isfinite(value) else (_NAN, "knn entropy overflowed", dist)


def knn_entropy(
    z: Any,
    k: int = 3,
    normalize: bool = True,
    max_points: int | None = None,
    seed: int = 0,
) -> float:
    """Kozachenko-Leonenko kNN estimate of the differential entropy (nats) of z.

    ``H = psi(n) - psi(k) + log V_d + (d / n) * sum_i log eps_i``, with eps_i the
    Euclidean distance from point i to its k-th nearest neighbour and V_d the volume of
    the unit d-ball. ``normalize=True`` first applies ``normalize_latents`` (invariant
    to z -> c z); ``normalize=False`` adds ``d * log(s)`` back (all distances scale
    with s). ``max_points`` subsamples that many points (seeded by ``seed``) before
    the neighbour search; the estimate depends on n, so compare values computed with
    the same number of points.

    Duplicates: if k + 1 or more points coincide (a zero k-th neighbour distance), every
    point gets Gaussian jitter of ``1e-6 x`` the data scale (seeded), which keeps the
    estimate finite (and very low, as it should be for near-atomic data). Data that
    span fewer than d dimensions (numerical covariance rank < d, e.g. n <= d or a
    constant coordinate) have no density in R^d: NaN.

    Example:
        >>> import numpy as np
        >>> z = np.random.default_rng(0).normal(size=(5000, 2))
        >>> round(knn_entropy(z, normalize=False), 1)  # N(0, I): log(2 pi e) = 2.84
        2.8
    """
    return _knn_entropy(_as_points(z), k, normalize, max_points, seed)[0]


# ------------------------------------------------------------- spectrum measures


def _spectrum(x: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    reason = _check_basic(x)
    if reason:
        return None, reason
    xn, _, reason = _normalized(x)
    if reason:
        return None, reason
    return _covariance_eigenvalues(xn), None


def _effective_rank_from(eig: np.ndarray) -> float:
    p = eig / eig.sum()
    p = p[p > 0.0]
    return float(np.exp(-np.sum(p * np.log(p))))


def _participation_ratio_from(eig: np.ndarray) -> float:
    return float(eig.sum() ** 2 / np.sum(eig**2))


def effective_rank(z: Any) -> float:
    """Effective rank (Roy & Vetterli 2007): exp of the Shannon entropy of the
    normalised covariance eigenvalues p_i = lambda_i / sum(lambda).

    Between 1 and d; d for an isotropic covariance, r for r equal non-zero eigenvalues.
    Scale-invariant. NaN for constant, non-finite or fewer than 3 points.

    Example:
        >>> import numpy as np
        >>> round(effective_rank(np.random.default_rng(0).normal(size=(20000, 4))), 2)
        4.0
    """
    eig, _ = _spectrum(_as_points(z))
    return _NAN if eig is None else _effective_rank_from(eig)


def participation_ratio(z: Any) -> float:
    """Participation ratio ``(sum lambda)^2 / sum(lambda^2)`` of the covariance spectrum.

    Between 1 and d; d for an isotropic covariance, r for r equal non-zero eigenvalues.
    Scale-invariant. NaN for constant, non-finite or fewer than 3 points.

    Example:
        >>> import numpy as np
        >>> z = np.random.default_rng(0).normal(size=(20000, 3)) * [1.0, 1.0, 0.0]
        >>> round(participation_ratio(z), 2)
        2.0
    """
    eig, _ = _spectrum(_as_points(z))
    return _NAN if eig is None else _participation_ratio_from(eig)


# -------------------------------------------------------- intrinsic dimension


def _prepare_for_id(
    x: np.ndarray, min_points: int, max_points: int | None, seed: int
) -> tuple[np.ndarray | None, str | None]:
    """Subsample, drop duplicate rows; None and a reason if too few points remain."""
    _check_max_points(max_points)
    reason = _check_basic(x, min_points=min_points)
    if reason:
        return None, reason
    x = _unique_rows(_pow2_rescaled(_subsample(x, max_points, seed), keep_float32=True)[0])
    if x.shape[0] < min_points:
        return None, f"only {x.shape[0]} distinct points (need at least {min_points})"
    return x, None


def _twonn_from_distances(dist: np.ndarray, discard_fraction: float) -> _Result:
    dist = dist[dist[:, 0] > 0.0]  # duplicates that byte-wise dedup missed (-0.0 vs 0.0)
    r1, r2 = dist[:, 0], dist[:, 1]
    mu = np.sort(r2 / r1)
    n = mu.size
    n_keep = min(int(math.floor(n * (1.0 - discard_fraction))), n - 1)
    if n_keep < 2:
        return _NAN, f"twonn: only {n_keep} ratios left after discarding"
    x = np.log(mu[:n_keep])
    y = -np.log1p(-np.arange(1, n_keep + 1) / n)
    sxx = float(np.dot(x, x))
    if not sxx > 0.0:
        return _NAN, "twonn: all neighbour distance ratios are 1 (lattice-like data)"
    return float(np.dot(x, y) / sxx), None


def _mle_from_distances(dist: np.ndarray, k: int) -> _Result:
    dist = dist[dist[:, 0] > 0.0]
    if dist.shape[0] == 0:
        return _NAN, "mle dimension: no point with a non-zero neighbour distance"
    log_t = np.log(dist[:, :k])
    inv = np.mean(log_t[:, k - 1 : k] - log_t[:, : k - 1], axis=1)  # 1 / m_k(x_i)
    mean_inv = float(np.mean(inv))
    if not mean_inv > 0.0:
        return _NAN, "mle dimension: all k nearest neighbours are equidistant"
    return 1.0 / mean_inv, None


def _check_discard(discard_fraction: float) -> None:
    if not (0.0 <= discard_fraction < 1.0):
        raise ValueError(f"discard_fraction must be in [0, 1), got {discard_fraction!r}")


def _check_k(k: int, low: int) -> None:
    if not isinstance(k, int | np.integer) or k < low:
        wanted = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"k must be {wanted}, got {k!r}")


def twonn_dimension(
    x: Any, discard_fraction: float = 0.1, max_points: int | None = None, seed: int = 0
) -> float:
    """TwoNN intrinsic dimension (Facco et al. 2017), linear-fit form.

    For every point, mu = r2 / r1 (distances to its second and first nearest
    neighbour). With the mu sorted and F_i = i / N their empirical distribution, the
    dimension is the slope of the least-squares line through the origin of
    ``-log(1 - F_i)`` against ``log(mu_i)``, fitted on the smallest
    ``1 - discard_fraction`` of the mu (the largest ratios are the noisiest). Duplicate
    points are collapsed to one first (a zero r1 makes mu undefined). ``max_points``
    subsamples (seeded by ``seed``) before that. Fewer than 3 distinct points: NaN.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(2000, 3)) @ rng.normal(size=(3, 20))  # a 3-d plane in 20-d
        >>> round(twonn_dimension(x))
        3
    """
    _check_discard(discard_fraction)
    data, reason = _prepare_for_id(_as_points(x, "x"), 3, max_points, seed)
    if data is None:
        return _NAN
    return _twonn_from_distances(_nearest_distances(data, 2), discard_fraction)[0]


def mle_dimension(x: Any, k: int = 10, max_points: int | None = None, seed: int = 0) -> float:
    """Levina-Bickel maximum-likelihood intrinsic dimension, MacKay-Ghahramani averaging.

    Per point, ``1 / m_k(x_i) = (1 / (k - 1)) * sum_{j < k} log(T_k(x_i) / T_j(x_i))``
    with T_j the distance to the j-th nearest neighbour; the estimate is
    ``1 / mean_i(1 / m_k(x_i))`` (averaging the inverses, as MacKay and Ghahramani
    suggest, instead of the per-point estimates). Duplicate points are collapsed first;
    ``max_points`` subsamples (seeded by ``seed``). Fewer than k + 1 distinct points: NaN.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(2000, 3)) @ rng.normal(size=(3, 20))
        >>> round(mle_dimension(x))
        3
    """
    _check_k(k, 2)
    data, reason = _prepare_for_id(_as_points(x, "x"), k + 1, max_points, seed)
    if data is None:
        return _NAN
    return _mle_from_distances(_nearest_distances(data, k), k)[0]


def image_intrinsic_dimension(images: Any, max_points: int = 2000, seed: int = 0) -> dict:
    """TwoNN and MLE (k = 10) intrinsic dimension of images flattened to vectors.

    ``images`` is N x C x H x W (any array with N first); at most ``max_points``
    images (seeded subsample) are used, duplicates collapsed, and one neighbour search
    serves both estimators. Returns ``{"image_intrinsic_dim_twonn": float,
    "image_intrinsic_dim_mle": float}`` (NaN where degenerate).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> imgs = (rng.normal(size=(1000, 2)) @ rng.normal(size=(2, 64))).reshape(-1, 1, 8, 8)
        >>> {k: round(v) for k, v in image_intrinsic_dimension(imgs).items()}
        {'image_intrinsic_dim_twonn': 2, 'image_intrinsic_dim_mle': 2}
    """
    arr = _to_numpy(images)
    if arr.ndim < 2:
        raise ValueError(f"images must be N x C x H x W, got shape {tuple(arr.shape)}")
    _check_max_points(max_points)
    k = 10
    out = {"image_intrinsic_dim_twonn": _NAN, "image_intrinsic_dim_mle": _NAN}
    arr = _subsample(arr, max_points, seed)
    flat = _as_points(arr.reshape(arr.shape[0], math.prod(arr.shape[1:])), "images")
    data, _ = _prepare_for_id(flat, 3, None, seed)
    if data is None:
        return out
    dist = _nearest_distances(data, min(k, data.shape[0] - 1))
    out["image_intrinsic_dim_twonn"] = _twonn_from_distances(dist[:, :2], 0.1)[0]
    if dist.shape[1] == k:
        out["image_intrinsic_dim_mle"] = _mle_from_distances(dist, k)[0]
    return out


# ------------------------------------------------------------ latent_statistics


def latent_statistics(
    z: Any, max_points: int = 2000, seed: int = 0, k: int = 3
) -> dict[str, float | str | None]:
    """All scale-free latent statistics, under the results-table names.

    Returns ``latent_entropy_gaussian`` (Ledoit-Wolf, all n points),
    ``latent_entropy_knn`` (Kozachenko-Leonenko with ``k`` neighbours),
    ``latent_effective_rank``, ``latent_participation_ratio`` (all n points),
    ``latent_intrinsic_dim`` (TwoNN, discard 10 %) and ``latent_statistics_reason``
    (None, or why some values are NaN or were computed with jitter). The kNN entropy
    and TwoNN use a fixed subsample of ``max_points`` points (``seed``) when n is
    larger, which bounds the run time (well under 1 s for n = 5,000, d = 256) and makes
    the kNN entropy, whose value depends on n, comparable across data sets.

    Example:
        >>> import numpy as np
        >>> stats = latent_statistics(np.zeros((100, 4)))
        >>> stats["latent_effective_rank"], stats["latent_statistics_reason"]
        (nan, 'z is constant (zero variance)')
    """
    _check_max_points(max_points)
    x = _as_points(z)
    out: dict[str, float | str | None] = {
        "latent_entropy_gaussian": _NAN,
        "latent_entropy_knn": _NAN,
        "latent_effective_rank": _NAN,
        "latent_participation_ratio": _NAN,
        "latent_intrinsic_dim": _NAN,
        "latent_statistics_reason": None,
    }
    reason = _check_basic(x)
    if reason is None:
        xn, _, reason = _normalized(x)
    if reason:
        out["latent_statistics_reason"] = reason
        return out
    reasons: list[str | None] = []
    out["latent_entropy_gaussian"], r = _gaussian_entropy(x, normalize=True)
    reasons.append(r)
    eig, r = _spectrum(x)
    if eig is not None:
        out["latent_effective_rank"] = _effective_rank_from(eig)
        out["latent_participation_ratio"] = _participation_ratio_from(eig)
        rank = _numerical_rank(eig)
        if rank < x.shape[1] and x.shape[0] > x.shape[1]:
            reasons.append(
                f"covariance rank {rank} < d = {x.shape[1]}: gaussian entropy is set by "
                "the shrinkage"
            )
    reasons.append(r)
    _check_k(k, 1)
    sub = _subsample(xn, max_points, seed)
    dist = None
    if sub.shape[0] >= k + 2:
        out["latent_entropy_knn"], r, dist = _knn_entropy_core(sub, k, seed)
    else:
        r = f"only {sub.shape[0]} points (need at least {k + 2})"
    reasons.append(r)
    # TwoNN reuses the kNN neighbour distances when the subsample has no duplicates.
    if dist is None or _unique_rows(sub).shape[0] < sub.shape[0]:
        data, r = _prepare_for_id(x, 3, max_points, seed)
        dist = None if data is None else _nearest_distances(data, 2)
    if dist is not None:
        out["latent_intrinsic_dim"], r = _twonn_from_distances(dist[:, :2], 0.1)
    reasons.append(r)
    out["latent_statistics_reason"] = _join(reasons)
    return out


# ------------------------------------------------------------------ predictors


def predict_latent_dim_from_intrinsic_dim(
    intrinsic_dim: float, candidates: Sequence[int] = DEFAULT_LATENT_DIM_CANDIDATES
) -> int:
    """The smallest candidate latent_dim that can hold the intrinsic dimension.

    Rule: round the intrinsic dimension to the nearest integer (halves up, at least 1)
    and return the smallest candidate >= that; if it exceeds every candidate, return
    the largest candidate. Candidates may come in any order.

    Example:
        >>> predict_latent_dim_from_intrinsic_dim(5.4), predict_latent_dim_from_intrinsic_dim(8.4)
        (8, 8)
        >>> predict_latent_dim_from_intrinsic_dim(8.6), predict_latent_dim_from_intrinsic_dim(500)
        (16, 128)
    """
    try:
        value = float(intrinsic_dim)
    except (TypeError, ValueError):
        raise ValueError(
            f"intrinsic_dim must be a positive number, got {intrinsic_dim!r}"
        ) from None
    if not np.isfinite(value) or value <= 0.0:
        raise ValueError(f"intrinsic_dim must be a finite positive number, got {intrinsic_dim!r}")
    cands = _check_latent_dims(candidates, "candidates")
    target = max(1, int(math.floor(value + 0.5)))
    ok = [c for c in sorted(set(cands)) if c >= target]
    return int(ok[0]) if ok else int(max(cands))


def _check_latent_dims(values: Sequence[Any], name: str) -> list[int]:
    vals = list(values)
    if not vals:
        raise ValueError(f"{name} must not be empty")
    out = []
    for v in vals:
        fv = float(v)
        if not np.isfinite(fv) or fv < 1 or fv != int(fv):
            raise ValueError(f"{name} must be positive integers, got {v!r}")
        out.append(int(fv))
    return out


def elbow_latent_dim(
    latent_dims: Sequence[int],
    errors: Sequence[float],
    *,
    min_sag: float = 0.1,
    flat_tolerance: float = 0.05,
) -> int:
    """Elbow of the normal validation reconstruction error against latent_dim.

    Rule:

    1. Average the errors per latent_dim (repeated latent_dims, e.g. seeds; NaN
       errors are ignored; a latent_dim whose errors are all NaN is dropped).
    2. Keep the curve up to its minimum mean error (more latent dimensions beyond the
       minimum buy nothing).
    3. On a log2 x-axis, rescale x and the mean error to [0, 1] and take the point
       furthest below the chord from the first to the last kept point (the
       maximum-distance-to-chord form of Kneedle).
    4. If no point lies at least ``min_sag`` below the chord (no knee: a flat or
       straight curve, or fewer than 3 kept points), return instead the smallest
       latent_dim whose mean error is within ``flat_tolerance`` (relative) of the last
       kept point's error.

    Example:
        >>> elbow_latent_dim([1, 2, 4, 8, 16, 32], [1.0, 0.7, 0.4, 0.1, 0.095, 0.09])
        8
        >>> elbow_latent_dim([1, 1, 2, 2, 4, 4], [0.30, 0.32, 0.30, 0.31, 0.31, 0.30])
        1
    """
    dims = _check_latent_dims(latent_dims, "latent_dims")
    errs = np.asarray(list(errors), dtype=np.float64)
    if errs.shape != (len(dims),):
        raise ValueError(
            f"latent_dims and errors must have the same length, got {len(dims)} and {errs.size}"
        )
    if not (0.0 <= min_sag < 1.0) or not (flat_tolerance >= 0.0):
        raise ValueError(
            f"min_sag must be in [0, 1) and flat_tolerance >= 0, got {min_sag!r}, "
            f"{flat_tolerance!r}"
        )
    dims_arr = np.asarray(dims)
    means, kept_dims = [], []
    for u in np.unique(dims_arr):
        vals = errs[dims_arr == u]
        vals = vals[np.isfinite(vals)]
        if vals.size:
            kept_dims.append(int(u))
            means.append(float(vals.mean()))
    if not means:
        raise ValueError("errors has no finite value")
    y = np.asarray(means)
    xs = np.log2(np.asarray(kept_dims, dtype=np.float64))
    end = int(np.argmin(y)) + 1
    y, xs, kept_dims = y[:end], xs[:end], kept_dims[:end]
    if y.size >= 3 and y[0] > y[-1]:
        xn = (xs - xs[0]) / (xs[-1] - xs[0])
        yn = (y - y[-1]) / (y[0] - y[-1])
        sag = (1.0 - xn) - yn  # chord from (0, 1) to (1, 0), minus the curve
        best = int(np.argmax(sag))
        if sag[best] >= min_sag:
            return kept_dims[best]
    limit = y[-1] + flat_tolerance * abs(y[-1])
    return int(kept_dims[int(np.argmax(y <= limit))])
