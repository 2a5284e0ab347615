"""Does lower latent entropy give better anomaly detection, and where?

The paper's claim, made testable per stratum (one data set x one model):

(a) **Best latent dimension.** ``d*`` = the latent_dim with the highest mean AUC over seeds.
    A bootstrap over seeds (resample the trials within each latent_dim, recompute the
    argmax) gives a 95 % percentile interval for ``d*`` and the fraction of resamples
    that agree with it.
(b) **Over-capacity branch** (latent_dim >= d*): the paper predicts that extra latent
    entropy hurts, i.e. a *negative* Spearman correlation between latent entropy and AUC
    across trials. Bootstrap 95 % CI (resampling trials) and a two-sided permutation
    p-value. ``supported`` when rho < 0 and the CI excludes 0, ``contradicted`` when
    rho > 0 and the CI excludes 0, otherwise ``inconclusive``.
(c) **Under-capacity branch** (latent_dim <= d*): the paper predicts a *positive*
    correlation (too little entropy cannot represent the normal data); verdicts mirror (b).
(d) **Global** correlation over all trials, reported for completeness: it mixes both
    branches, so an inverted U gives a weak or misleading value there.

Label-free predictions of ``d*`` sit beside the observed one: the smallest power of two
>= the intrinsic dimension of the normal training images, and the elbow of the normal
validation reconstruction error against latent_dim.

Every random draw comes from ``numpy.random.default_rng(seed)`` so numbers repeat.

Example:
    >>> import numpy as np, pandas as pd
    >>> rows = [dict(dataset="toy", model="ae", latent_dim=d, seed=s, status="completed",
    ...              auc=0.9 - 0.05 * np.log2(d) + 0.01 * s,
    ...              latent_entropy_gaussian=np.log2(d) + 0.1 * s)
    ...         for d in (1, 2, 4, 8, 16) for s in (0, 1, 2)]
    >>> (v,) = verdicts(pd.DataFrame(rows), n_boot=200, n_perm=200)
    >>> v.best_latent_dim, v.over.verdict, v.over.n
    (1, 'supported', 15)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy import stats

from ae4ad.latent import (
    DEFAULT_LATENT_DIM_CANDIDATES,
    elbow_latent_dim,
    predict_latent_dim_from_intrinsic_dim,
)

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"

ENTROPY_COLUMNS: tuple[str, ...] = (
    "latent_entropy_gaussian",
    "latent_entropy_knn",
    "latent_effective_rank",
    "latent_participation_ratio",
    "latent_intrinsic_dim",
)
"""Latent entropy estimators written by the harness (any of them can drive the tests)."""

MIN_BRANCH_TRIALS = 4
MIN_BRANCH_LATENT_DIMS = 2


@dataclass(frozen=True)
class BranchTest:
    """A Spearman test of latent entropy against AUC on one branch of the AUC curve.

    ``expected_sign`` is the sign the paper predicts (-1 over capacity, +1 under capacity;
    the global test uses -1, the naive "lower entropy is better" reading).
    ``verdict`` is one of ``supported``, ``contradicted``, ``inconclusive``; ``reason``
    says why in words and is never empty.
    """

    branch: str
    n: int
    n_latent_dims: int
    rho: float
    ci_low: float
    ci_high: float
    p_value: float
    verdict: str
    reason: str
    expected_sign: int
    latent_dims: tuple[int, ...] = ()

    def describe(self) -> str:
        """One line with the numbers, e.g. ``rho = -0.81 (95 % CI -0.90 to -0.66, p = 0.001,
        n = 15 trials at 4 latent dims)``."""
        if not math.isfinite(self.rho):
            return f"n = {self.n} trials at {self.n_latent_dims} latent dims: {self.reason}"
        return (
            f"rho = {self.rho:+.2f} (95 % CI {self.ci_low:+.2f} to {self.ci_high:+.2f}, "
            f"permutation p {format_p_clause(self.p_value)}, n = {self.n} trials at "
            f"{self.n_latent_dims} latent dims)"
        )


@dataclass(frozen=True)
class LatentDimPrediction:
    """A label-free prediction of the best latent_dim.

    ``source_value`` is what the prediction is made from (the intrinsic dimension, or the
    elbow's reconstruction error); ``ratio`` = predicted / observed best (NaN when either
    is missing); ``reason`` explains a missing prediction.
    """

    method: str
    predicted: int | None
    source_value: float
    observed: int | None
    ratio: float
    reason: str = ""


@dataclass(frozen=True)
class StratumVerdict:
    """Everything the report says about one stratum (data set x model)."""

    stratum: str
    dataset: str
    model: str
    metric: str
    entropy_col: str
    n_trials: int
    n_seeds: int
    latent_dims: tuple[int, ...]
    mean_by_latent_dim: dict[int, float]
    std_by_latent_dim: dict[int, float]
    count_by_latent_dim: dict[int, int]
    best_latent_dim: int | None
    best_mean: float
    best_std: float
    best_ci_low: int | None
    best_ci_high: int | None
    best_agreement: float
    best_reason: str
    over: BranchTest
    under: BranchTest
    overall: BranchTest
    predictions: tuple[LatentDimPrediction, ...] = field(default_factory=tuple)

    @property
    def verdict(self) -> str:
        """The headline verdict: the over-capacity test (the paper's main claim)."""
        return self.over.verdict

    def best_text(self) -> str:
        """The best latent_dim with its interval (or why there is none)."""
        if self.best_latent_dim is None:
            return f"no best latent_dim: {self.best_reason}"
        text = (
            f"best latent_dim d* = {self.best_latent_dim} "
            f"(mean {self.metric.upper()} {self.best_mean:.3f}"
        )
        if math.isfinite(self.best_std):
            text += f" ± {self.best_std:.3f}"
        text += f" over {self.count_by_latent_dim.get(self.best_latent_dim, 0)} trials)"
        if self.best_ci_low is not None:
            text += (
                f"; 95 % bootstrap interval {self.best_ci_low}–{self.best_ci_high}, "
                f"{100 * self.best_agreement:.0f} % of resamples agree"
            )
        elif self.best_reason:
            text += f"; {self.best_reason}"
        return text

    def summary(self) -> str:
        """A paragraph in words, with every verdict next to its n."""
        parts = [f"{self.stratum}: {self.best_text()}."]
        parts.append(
            f"Over capacity (d ≥ d*): {self.over.verdict.upper()}, {self.over.describe()}."
        )
        parts.append(
            f"Under capacity (d ≤ d*): {self.under.verdict.upper()}, {self.under.describe()}."
        )
        parts.append(f"All trials (mixes both branches): {self.overall.describe()}.")
        for p in self.predictions:
            if p.predicted is None:
                parts.append(f"Prediction from {p.method}: none ({p.reason}).")
            else:
                parts.append(
                    f"Prediction from {p.method}: d = {p.predicted} "
                    f"(ratio to d*: {format_ratio(p.ratio)})."
                )
        return " ".join(parts)


def format_p(p: float) -> str:
    """A p-value for humans: ``0.003``, ``< 0.001`` or ``n/a``."""
    if not math.isfinite(p):
        return "n/a"
    if p < 0.001:
        return "< 0.001"
    return f"{p:.3f}"


def format_p_clause(p: float) -> str:
    """``= 0.003`` or ``< 0.001``: what follows "p" in a sentence."""
    text = format_p(p)
    return text if text.startswith("<") else f"= {text}"


def format_ratio(r: float) -> str:
    """``2.00x`` or ``n/a``."""
    return f"{r:.2f}x" if math.isfinite(r) else "n/a"


# ----------------------------------------------------------------------------- statistics


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
    """Average ranks within each row of ``values[idx]`` without sorting every row.

    A row holds copies of the original values; with ``c_g`` copies of the g-th smallest
    distinct value, those copies share the rank ``sum(c_<g) + (c_g + 1) / 2``.
    """
    uniq, group = np.unique(values, return_inverse=True)
    n_rows, n = idx.shape
    gid = group[idx]
    flat = (gid + np.arange(n_rows)[:, None] * len(uniq)).ravel()
    counts = np.bincount(flat, minlength=n_rows * len(uniq)).reshape(n_rows, len(uniq))
    group_rank = np.cumsum(counts, axis=1) - counts + (counts + 1) / 2.0
    return np.take_along_axis(group_rank, gid, axis=1)


def spearman_test(
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_boot: int = 2000,
    n_perm: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float, float]:
    """Spearman rho of ``x`` and ``y``, its bootstrap 95 % percentile CI (resampling
    pairs) and a two-sided permutation p-value.

    Returns ``(rho, ci_low, ci_high, p_value)``; all NaN when either input is constant.

    Example:
        >>> import numpy as np
        >>> rho, lo, hi, p = spearman_test(np.arange(10.0), -np.arange(10.0), n_boot=100,
        ...                                n_perm=100)
        >>> rho, lo, hi, p < 0.05
        (-1.0, -1.0, -1.0, True)
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = len(x)
    rx = stats.rankdata(x)
    ry = stats.rankdata(y)
    rho = float(_row_spearman(rx[None], ry[None])[0])
    if not math.isfinite(rho):
        return (math.nan,) * 4
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boot = _row_spearman(_resampled_ranks(x, idx), _resampled_ranks(y, idx))
    boot = boot[np.isfinite(boot)]
    if len(boot) == 0:
        lo = hi = math.nan
    else:
        lo, hi = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    null = _row_spearman(
        np.broadcast_to(rx, (n_perm, n)), rng.permuted(np.broadcast_to(ry, (n_perm, n)), axis=1)
    )
    extreme = np.sum(np.abs(null) >= abs(rho) - 1e-12)
    p = float((1 + extreme) / (1 + n_perm))
    return round(rho, 12), lo, hi, p


def _branch_verdict(rho: float, lo: float, hi: float, expected_sign: int) -> tuple[str, str]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return INCONCLUSIVE, "no bootstrap interval"
    excludes_zero = lo > 0 or hi < 0
    if not excludes_zero:
        return INCONCLUSIVE, "the 95 % CI includes 0"
    sign = 1 if rho > 0 else -1
    word = "higher" if sign > 0 else "lower"
    text = f"{word} latent entropy goes with higher AUC"
    if sign == expected_sign:
        return SUPPORTED, text + " (as the paper predicts)"
    return CONTRADICTED, text + " (against the paper's prediction)"


def branch_test(
    df: pd.DataFrame,
    *,
    branch: str,
    expected_sign: int,
    entropy_col: str,
    metric: str = "auc",
    n_boot: int = 2000,
    n_perm: int = 2000,
    seed: int = 0,
) -> BranchTest:
    """Test the entropy-metric correlation on the trials in ``df`` (one branch).

    Trials with a missing entropy or metric are left out; fewer than
    ``MIN_BRANCH_TRIALS`` trials or ``MIN_BRANCH_LATENT_DIMS`` distinct latent_dims give an
    inconclusive verdict with that reason.
    """
    nan = math.nan
    if entropy_col not in df.columns:
        return BranchTest(
            branch,
            0,
            0,
            nan,
            nan,
            nan,
            nan,
            INCONCLUSIVE,
            f"column {entropy_col!r} is not in the trials table",
            expected_sign,
        )
    arr = np.column_stack(
        [
            pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
            for c in ("latent_dim", entropy_col, metric)
        ]
    ).reshape(len(df), 3)
    arr = arr[np.isfinite(arr).all(axis=1)]
    n = len(arr)
    dims = tuple(int(d) for d in np.unique(arr[:, 0]))
    base = dict(branch=branch, n=n, n_latent_dims=len(dims), expected_sign=expected_sign)
    if n < MIN_BRANCH_TRIALS or len(dims) < MIN_BRANCH_LATENT_DIMS:
        reason = (
            f"too few trials: {n} with a finite {entropy_col} and {metric} at {len(dims)} "
            f"latent dims (need >= {MIN_BRANCH_TRIALS} trials at >= "
            f"{MIN_BRANCH_LATENT_DIMS} latent dims)"
        )
        return BranchTest(
            **base,
            rho=nan,
            ci_low=nan,
            ci_high=nan,
            p_value=nan,
            verdict=INCONCLUSIVE,
            reason=reason,
            latent_dims=dims,
        )
    rho, lo, hi, p = spearman_test(
        arr[:, 1],
        arr[:, 2],
        n_boot=n_boot,
        n_perm=n_perm,
        seed=seed,
    )
    if not math.isfinite(rho):
        return BranchTest(
            **base,
            rho=nan,
            ci_low=nan,
            ci_high=nan,
            p_value=nan,
            verdict=INCONCLUSIVE,
            reason=f"{entropy_col} or {metric} is constant on this branch",
            latent_dims=dims,
        )
    verdict, reason = _branch_verdict(rho, lo, hi, expected_sign)
    return BranchTest(
        **base,
        rho=rho,
        ci_low=lo,
        ci_high=hi,
        p_value=p,
        verdict=verdict,
        reason=reason,
        latent_dims=dims,
    )


def best_latent_dim(
    df: pd.DataFrame, *, metric: str = "auc", n_boot: int = 2000, seed: int = 0
) -> tuple[int | None, int | None, int | None, float, str]:
    """The latent_dim with the highest mean ``metric`` and a bootstrap interval for it.

    Returns ``(best, ci_low, ci_high, agreement, reason)``: the interval is the 2.5/97.5
    percentiles of the resampled argmax (trials resampled within each latent_dim), the
    agreement the fraction of resamples whose argmax equals ``best``. Ties go to the
    smallest latent_dim. With one seed only there is no interval (``None``) and
    ``reason`` says so.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame(dict(latent_dim=[1, 2, 4, 1, 2, 4], seed=[0, 0, 0, 1, 1, 1],
        ...                        auc=[0.6, 0.9, 0.7, 0.62, 0.88, 0.71]))
        >>> best_latent_dim(df, n_boot=100)[:4]
        (2, 2, 2, 1.0)
    """
    sub = df[["latent_dim", metric]].apply(pd.to_numeric, errors="coerce").dropna()
    if sub.empty:
        return None, None, None, math.nan, f"no trial with a finite {metric}"
    groups = {int(d): g[metric].to_numpy(dtype=float) for d, g in sub.groupby("latent_dim")}
    dims = np.array(sorted(groups))
    means = np.array([groups[d].mean() for d in dims])
    best = int(dims[int(np.argmax(means))])
    n_seeds = df.loc[sub.index, "seed"].nunique() if "seed" in df.columns else 1
    if len(dims) < 2:
        return best, None, None, math.nan, "only one latent_dim: no interval"
    if n_seeds < 2 or max(len(v) for v in groups.values()) < 2:
        return best, None, None, math.nan, "one seed only: no interval for the best latent_dim"
    rng = np.random.default_rng(seed)
    boot_means = np.empty((n_boot, len(dims)))
    for j, d in enumerate(dims):
        v = groups[int(d)]
        boot_means[:, j] = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    boot_best = dims[np.argmax(boot_means, axis=1)]
    lo, hi = np.percentile(boot_best, [2.5, 97.5], method="inverted_cdf")
    agreement = float(np.mean(boot_best == best))
    return best, int(lo), int(hi), agreement, ""


# ----------------------------------------------------------------- label-free predictions


def predict_from_intrinsic_dim(
    intrinsic_dim: float, candidates: Sequence[int] = DEFAULT_LATENT_DIM_CANDIDATES
) -> int | None:
    """Label-free latent_dim from the image intrinsic dimension: the smallest candidate
    latent_dim >= the rounded intrinsic dimension (the rule of
    ``ae4ad.latent.predict_latent_dim_from_intrinsic_dim``); None when it is missing.

    Example:
        >>> predict_from_intrinsic_dim(5.3), predict_from_intrinsic_dim(float("nan"))
        (8, None)
    """
    try:
        return int(predict_latent_dim_from_intrinsic_dim(float(intrinsic_dim), candidates))
    except (TypeError, ValueError):
        return None


def elbow_from_errors(latent_dims: Sequence[int], errors: Sequence[float]) -> int | None:
    """Label-free latent_dim from the elbow of the normal reconstruction error against
    latent_dim (the rule of ``ae4ad.latent.elbow_latent_dim``); None without finite errors.

    Example:
        >>> elbow_from_errors([1, 2, 4, 8, 16, 32], [1.0, 0.6, 0.3, 0.25, 0.24, 0.23])
        4
    """
    try:
        return int(elbow_latent_dim(latent_dims, errors))
    except (TypeError, ValueError):
        return None


def _predictions(df: pd.DataFrame, best: int | None) -> tuple[LatentDimPrediction, ...]:
    out = []
    candidates = sorted(int(d) for d in df["latent_dim"].unique()) or DEFAULT_LATENT_DIM_CANDIDATES

    def ratio(pred: int | None) -> float:
        return pred / best if (pred is not None and best) else math.nan

    col = "image_intrinsic_dim_twonn"
    vals = pd.to_numeric(df[col], errors="coerce").dropna() if col in df.columns else None
    if vals is None or vals.empty:
        out.append(
            LatentDimPrediction(
                "image intrinsic dimension (TwoNN)",
                None,
                math.nan,
                best,
                math.nan,
                f"no {col} values",
            )
        )
    else:
        idim = float(vals.median())
        pred = predict_from_intrinsic_dim(idim, candidates)
        out.append(
            LatentDimPrediction(
                "image intrinsic dimension (TwoNN)",
                pred,
                idim,
                best,
                ratio(pred),
                f"intrinsic dimension {idim:.2f} -> smallest tried latent_dim >= it",
            )
        )
    err_col = next(
        (
            c
            for c in ("recon_error_val_normal", "recon_error_test_normal")
            if c in df.columns and pd.to_numeric(df[c], errors="coerce").notna().any()
        ),
        None,
    )
    method = "elbow of normal reconstruction error"
    if err_col is None:
        out.append(
            LatentDimPrediction(method, None, math.nan, best, math.nan, "no reconstruction errors")
        )
    else:
        curve = (
            df.assign(_e=pd.to_numeric(df[err_col], errors="coerce"))
            .dropna(subset=["_e"])
            .groupby("latent_dim")["_e"]
            .mean()
        )
        pred = elbow_from_errors(curve.index.to_numpy(), curve.to_numpy())
        split = "validation" if err_col.endswith("val_normal") else "test"
        reason = f"from {err_col} ({split} normal images)"
        if pred is None:
            reason = f"no finite {err_col} values"
        src = float(curve.get(pred, math.nan)) if pred is not None else math.nan
        out.append(LatentDimPrediction(method, pred, src, best, ratio(pred), reason))
    return tuple(out)


# ----------------------------------------------------------------------------- entry point


def _stratum_key(df: pd.DataFrame) -> pd.Series:
    if "stratum" in df.columns:
        return df["stratum"].astype(str)
    return df["dataset"].astype(str) + "/" + df["model"].astype(str)


def verdicts(
    trials_df: pd.DataFrame,
    entropy_col: str = "latent_entropy_gaussian",
    *,
    metric: str = "auc",
    n_boot: int = 2000,
    n_perm: int = 2000,
    seed: int = 0,
) -> list[StratumVerdict]:
    """One :class:`StratumVerdict` per stratum, from the completed trials of a study.

    ``trials_df`` is the harness's trials table (columns dataset, model, latent_dim, seed,
    status, the metric and the entropy column; ``stratum`` optional). Rows whose status is
    not ``completed`` are ignored. Strata come out in the order they first appear.

    Raises ``ValueError`` naming the missing column when latent_dim, dataset, model or the
    metric is absent.
    """
    for col in ("dataset", "model", "latent_dim", metric):
        if col not in trials_df.columns:
            raise ValueError(
                f"trials table: column {col!r} is missing; the hypothesis tests need "
                f"dataset, model, latent_dim and {metric}"
            )
    df = trials_df
    if "status" in df.columns:
        df = df[df["status"] == "completed"]
    df = df.assign(_stratum=_stratum_key(df))
    df = df[pd.to_numeric(df["latent_dim"], errors="coerce").notna()].copy()
    df["latent_dim"] = df["latent_dim"].astype(int)
    out = []
    for key, g in df.groupby("_stratum", sort=False):
        vals = g[["latent_dim", metric]].copy()
        vals[metric] = pd.to_numeric(vals[metric], errors="coerce")
        vals = vals.dropna()
        agg = vals.groupby("latent_dim")[metric].agg(["mean", "std", "count"])
        best, lo, hi, agree, reason = best_latent_dim(g, metric=metric, n_boot=n_boot, seed=seed)
        common = dict(entropy_col=entropy_col, metric=metric, n_boot=n_boot, n_perm=n_perm)
        if best is None:
            over = under = branch_test(
                g.iloc[:0], branch="over-capacity", expected_sign=-1, seed=seed, **common
            )
        else:
            over = branch_test(
                g[g["latent_dim"] >= best],
                branch="over-capacity",
                expected_sign=-1,
                seed=seed,
                **common,
            )
            under = branch_test(
                g[g["latent_dim"] <= best],
                branch="under-capacity",
                expected_sign=1,
                seed=seed + 1,
                **common,
            )
        overall = branch_test(g, branch="global", expected_sign=-1, seed=seed + 2, **common)
        if math.isfinite(overall.rho):
            overall = replace(overall, reason="mixes the over- and under-capacity branches")
        best_std = float(agg.loc[best, "std"]) if best is not None else math.nan
        out.append(
            StratumVerdict(
                stratum=str(key),
                dataset=str(g["dataset"].iloc[0]),
                model=str(g["model"].iloc[0]),
                metric=metric,
                entropy_col=entropy_col,
                n_trials=len(g),
                n_seeds=int(g["seed"].nunique()) if "seed" in g.columns else 1,
                latent_dims=tuple(int(d) for d in agg.index),
                mean_by_latent_dim={int(d): float(v) for d, v in agg["mean"].items()},
                std_by_latent_dim={int(d): float(v) for d, v in agg["std"].items()},
                count_by_latent_dim={int(d): int(v) for d, v in agg["count"].items()},
                best_latent_dim=best,
                best_mean=float(agg.loc[best, "mean"]) if best is not None else math.nan,
                best_std=best_std,
                best_ci_low=lo,
                best_ci_high=hi,
                best_agreement=agree,
                best_reason=reason,
                over=over,
                under=under,
                overall=overall,
                predictions=_predictions(g, best),
            )
        )
    return out


def verdicts_table(items: list[StratumVerdict]) -> pd.DataFrame:
    """The verdicts as a flat table (one row per stratum and branch), e.g. for CSV export."""
    rows = []
    for v in items:
        for b in (v.over, v.under, v.overall):
            rows.append(
                dict(
                    stratum=v.stratum,
                    dataset=v.dataset,
                    model=v.model,
                    entropy=v.entropy_col,
                    best_latent_dim=v.best_latent_dim,
                    best_ci_low=v.best_ci_low,
                    best_ci_high=v.best_ci_high,
                    best_agreement=v.best_agreement,
                    branch=b.branch,
                    n=b.n,
                    n_latent_dims=b.n_latent_dims,
                    rho=b.rho,
                    ci_low=b.ci_low,
                    ci_high=b.ci_high,
                    p_value=b.p_value,
                    verdict=b.verdict,
                    reason=b.reason,
                )
            )
    return pd.DataFrame(rows)
