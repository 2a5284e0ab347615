"""Entropy at a fixed latent dimension: the paper's claim about entropy itself.

Every latent entropy estimator rises with latent_dim, so a test across latent_dims
cannot tell entropy from latent_dim. Among trials of one data set that share a
latent_dim and differ in what else sets the entropy (regularisers, weight decay, seeds),
this module tests whether lower entropy goes with higher AUC.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from study.hypothesis.capacity import _column
from study.hypothesis.records import (
    CONTRADICTED,
    MIN_CORRELATION_TRIALS,
    NOT_SHOWN,
    NOT_TESTED,
    SUPPORTED,
    FixedDimTest,
    check_higher_is_better,
)
from study.stats import holm, stratified_permutation_rho


def fixed_latent_dim_tests(
    trials: pd.DataFrame,
    alpha: float = 0.05,
    *,
    entropy_col: str = "latent_entropy_gaussian",
    metric: str = "auc",
    n_perm: int = 5000,
    seed: int = 0,
    adjust: str | None = "holm",
) -> list[FixedDimTest]:
    """Does lower latent entropy go with higher AUC among trials that share a latent_dim?

    Per data set: completed trials grouped by latent_dim; the statistic is the pooled
    within-group Spearman rho (the correlation of within-group centred ranks); its null
    distribution comes from permuting AUC within each latent_dim group (exact under "the
    entropy of a trial says nothing about its AUC at that latent_dim"). Two-sided p;
    ``supported`` when p <= alpha and rho < 0, ``contradicted`` when p <= alpha and
    rho > 0, ``not shown`` otherwise. Groups need 2 or more trials that differ in both.

    Example:
        >>> import numpy as np, pandas as pd
        >>> rng = np.random.default_rng(1)
        >>> h = rng.normal(size=30)
        >>> df = pd.DataFrame(dict(dataset="toy", model="vae", latent_dim=64, seed=range(30),
        ...     status="completed", latent_entropy_gaussian=h,
        ...     auc=0.8 - 0.02 * h + 0.005 * rng.normal(size=30)))
        >>> (t,) = fixed_latent_dim_tests(df, n_perm=2000)
        >>> t.verdict, t.rho < -0.5
        ('supported', True)
    """
    check_higher_is_better(metric)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a number in (0, 1), got {alpha!r}")
    df = trials[trials["status"] == "completed"] if "status" in trials.columns else trials
    raw = [
        _fixed_one(str(name), g, entropy_col, metric, n_perm, seed)
        for name, g in df.groupby(df["dataset"].astype(str), sort=False)
    ]
    p_raw = [r["p"] for r in raw]
    p_adj = holm(p_raw) if adjust == "holm" else p_raw
    out = []
    for r, pa in zip(raw, p_adj):
        reason = r["reason"]
        if reason:
            verdict = NOT_TESTED
        elif pa <= alpha:
            verdict = SUPPORTED if r["rho"] < 0 else CONTRADICTED
            reason = ("lower" if r["rho"] < 0 else "higher") + " entropy goes with higher AUC"
        else:
            verdict, reason = NOT_SHOWN, "the within-latent_dim correlation is within noise"
        out.append(
            FixedDimTest(
                r["dataset"],
                entropy_col,
                metric,
                r["n"],
                r["groups"],
                r["rho"],
                r["p"],
                pa,
                verdict,
                reason,
                r["range"],
            )  # fmt: skip
        )
    return out


def _fixed_one(
    dataset: str, g: pd.DataFrame, entropy_col: str, metric: str, n_perm: int, seed: int
) -> dict:
    out = dict(dataset=dataset, n=0, groups={}, p=math.nan, rho=math.nan,
               range=(math.nan, math.nan), reason="")  # fmt: skip
    if entropy_col not in g.columns:
        out["reason"] = f"no column {entropy_col!r}"
        return out
    dims = pd.to_numeric(g["latent_dim"], errors="coerce").to_numpy(dtype=float)
    h, y = _column(g, entropy_col), _column(g, metric)
    ok = np.isfinite(dims) & np.isfinite(h) & np.isfinite(y)
    dims, h, y = dims[ok].astype(int), h[ok], y[ok]
    keep = np.zeros(len(dims), dtype=bool)
    for d in np.unique(dims):
        sel = dims == d
        if sel.sum() >= 2 and np.ptp(h[sel]) > 0 and np.ptp(y[sel]) > 0:
            keep |= sel
    dims, h, y = dims[keep], h[keep], y[keep]
    out["n"] = len(y)
    out["groups"] = {int(d): int(np.sum(dims == d)) for d in np.unique(dims)}
    if len(y) < MIN_CORRELATION_TRIALS:
        out["reason"] = (
            f"too few trials that share a latent_dim and differ in {entropy_col} "
            f"({len(y)}; need {MIN_CORRELATION_TRIALS})"
        )
        return out
    out["rho"], out["p"] = stratified_permutation_rho(h, y, dims, n_perm=n_perm, seed=seed)
    out["range"] = (float(h.min()), float(h.max()))
    return out
