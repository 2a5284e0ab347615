"""The capacity verdict from published summary statistics (mean, sd and n per latent_dim),
e.g. the paper's own Table 1.

The test is the trial-based one (:func:`study.hypothesis.verdicts`, seeds only) fed with
the same numbers a trials table gives it: per latent_dim the mean, the sample variance
(``std**2``) and the number of runs. Its calibration (docs/report.md, "seeds only") holds
under the same assumptions, which a summary cannot check:

- ``std`` is the sample standard deviation (n - 1 in the denominator) over ``n``
  independent runs per latent_dim, the runs roughly normal;
- the runs at different latent_dims are independent (any pairing of seeds is unknown);
- the test set is taken as fixed (no per-image scores: the verdict speaks of retraining
  on that test set).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from study.hypothesis.capacity import _conclude, _Stratum
from study.hypothesis.records import StratumVerdict, Uncertainty
from study.stats import Design, GroupMeans

SUMMARY_COLUMNS = ("dataset", "latent_dim", "mean", "std", "n")


def verdicts_from_summary(
    table: pd.DataFrame,
    alpha: float = 0.05,
    *,
    metric: str = "auc",
    n_sim: int = 10000,
    seed: int = 0,
    adjust: str | None = "holm",
) -> list[StratumVerdict]:
    """One :class:`StratumVerdict` per data set (x ``model`` when the table has it) of a
    table of summary statistics per latent_dim: columns ``dataset``, ``latent_dim``,
    ``mean``, ``std``, ``n`` (``model`` optional; with a ``metric`` column only its rows
    for ``metric`` count). Same words, tests and Holm adjustment as
    :func:`study.hypothesis.verdicts` (seeds only); no correlations and no label-free
    predictions (they need trials). The module docstring states the assumptions.

    Raises ValueError naming the column when one is missing, and when a std is negative
    or an n is below 1.

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame(dict(dataset="toy", latent_dim=[1, 2, 4, 8, 16],
        ...     mean=[60.0, 66.0, 71.0, 66.0, 61.0], std=[0.5, 0.8, 1.0, 0.7, 0.6], n=3))
        >>> (v,) = verdicts_from_summary(t, n_sim=4000)
        >>> v.best_latent_dim, v.verdict
        (4, 'supported')
    """
    for col in SUMMARY_COLUMNS:
        if col not in table.columns:
            raise ValueError(
                f"summary table: column {col!r} is missing; needed: {', '.join(SUMMARY_COLUMNS)}"
            )
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a number in (0, 1), got {alpha!r}")
    df = table[table["metric"].astype(str) == metric] if "metric" in table.columns else table
    num = {c: pd.to_numeric(df[c], errors="coerce") for c in ("latent_dim", "mean", "std", "n")}
    if (num["std"] < 0).any() or (num["n"] < 1).any():
        raise ValueError("summary table: std must be >= 0 and n >= 1 in every row")
    df = df.assign(**num).dropna(subset=["latent_dim", "mean", "std", "n"])
    model = df["model"].astype(str) if "model" in df.columns else pd.Series("ae", df.index)
    keys = df["dataset"].astype(str) + "/" + model
    strata = [
        _stratum(str(key), g, str(model.loc[g.index[0]])) for key, g in df.groupby(keys, sort=False)
    ]
    for s in strata:
        s.metric = metric
    return _conclude(strata, "", alpha, n_sim, 0, seed, adjust)


def _stratum(key: str, g: pd.DataFrame, model: str) -> _Stratum:
    g = g.sort_values("latent_dim")
    dims = g["latent_dim"].to_numpy(dtype=int)
    counts = g["n"].to_numpy(dtype=float)
    var = np.where(counts > 1, g["std"].to_numpy(dtype=float) ** 2, np.nan)
    gm = GroupMeans(dims, g["mean"].to_numpy(dtype=float), counts, var)
    empty = np.array([])
    s = _Stratum(
        key=key,
        dataset=str(g["dataset"].iloc[0]),
        model=model,
        n_trials=int(counts.sum()),
        dims=empty.astype(int),
        y=empty,
        entropy=empty,
        intrinsic=empty,
        val_error=empty,
        seeds=empty,
        n_seeds=int(counts.max()),
        gm=gm,
    )
    df = int(np.sum(counts - 1))
    sd = float(np.sqrt(np.nanmean(var))) if df else math.nan
    note = ("published mean, sd and n per latent_dim (runs taken as independent and normal; "
            "the test set as fixed)")  # fmt: skip
    s.uncertainty = Uncertainty("seeds (published summary)", s.n_seeds, df, sd, 0, note)
    if len(dims) < 2:
        s.refusal = "only one latent_dim"
    elif len(np.unique(dims)) < len(dims):
        s.refusal = "a latent_dim appears twice in the summary table"
    elif df == 0:
        s.refusal = "n = 1 at every latent_dim: no variance"
    elif np.nansum(var) == 0:
        s.refusal = "every std is 0: no variance"
    if not s.refusal:
        s.design = Design(gm.means[None], var[None], counts)
    return s
