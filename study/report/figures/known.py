"""The known-answer figure and the values behind the report's "Known answer" section: per
stratum whose trials carry ``known_dim`` (the phantom with a finite ``texture_rank``),
the known dimension beside d*, the elbow of the normal validation error and the image
intrinsic dimension, read from the verdict records and the trials."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from study.report.context import Ctx
from study.report.figures.grid import Grid, NotAvailable, Plot, log2_axis
from study.report.values import has_values

KNOWN = "known_dim"
MIN_RANKED = 3
"""Data sets needed (with two or more distinct values on each side) for a rank correlation."""


@dataclass(frozen=True)
class KnownRow:
    """One stratum: its known dimension, d* and the set within reach of it, the
    over-capacity verdict, and the label-free predictions (elbow; TwoNN and MLE of the
    training images, and the latent_dim the TwoNN value predicts)."""

    stratum: str
    dataset: str
    model: str
    known_dim: float
    best: int | None
    best_set: tuple[int, ...]
    verdict: str
    elbow: int | None
    intrinsic_prediction: int | None
    twonn: float
    mle: float


def _median(g: pd.DataFrame, col: str) -> float:
    if col not in g.columns:
        return math.nan
    v = pd.to_numeric(g[col], errors="coerce").dropna()
    return float(v.median()) if len(v) else math.nan


def known_rows(ctx: Ctx) -> list[KnownRow]:
    """One :class:`KnownRow` per stratum (verdict order) whose completed trials carry
    ``known_dim``."""
    if not has_values(ctx.done, KNOWN):
        return []
    rows = []
    for v in ctx.verdicts:
        g = ctx.done[ctx.done["_stratum"] == v.stratum]
        known = _median(g, KNOWN)
        if not math.isfinite(known):
            continue
        pred = {("elbow" if "elbow" in p.method else "id"): p.predicted for p in v.predictions}
        rows.append(
            KnownRow(
                stratum=v.stratum,
                dataset=v.dataset,
                model=v.model,
                known_dim=known,
                best=v.best_latent_dim,
                best_set=tuple(int(d) for d in v.best_set),
                verdict=v.over.verdict,
                elbow=pred.get("elbow"),
                intrinsic_prediction=pred.get("id"),
                twonn=_median(g, "image_intrinsic_dim_twonn"),
                mle=_median(g, "image_intrinsic_dim_mle"),
            )
        )
    return rows


def rank_correlation(known: list[float], found: list[float | int | None]) -> tuple[float, int, str]:
    """Spearman's rho of ``found`` with ``known`` over the pairs where both are numbers:
    ``(rho, n, reason)``; rho is NaN, with the reason, below :data:`MIN_RANKED` pairs or
    without two distinct values on either side.

    >>> rho, n, _ = rank_correlation([4, 8, 16, 32], [4, 8, 8, 32])
    >>> round(rho, 3), n
    (0.949, 4)
    >>> rank_correlation([4, 8], [4, 8])[2]
    '2 data sets; a rank correlation needs 3 or more'
    """
    pairs = [(k, f) for k, f in zip(known, found) if f is not None]
    pairs = [(float(k), float(f)) for k, f in pairs if math.isfinite(k) and math.isfinite(f)]
    n = len(pairs)
    if n < MIN_RANKED:
        return math.nan, n, f"{n} data set{'' if n == 1 else 's'}; a rank correlation needs "\
            f"{MIN_RANKED} or more"  # fmt: skip
    k, f = np.array(pairs).T
    if len(np.unique(k)) < 2 or len(np.unique(f)) < 2:
        return math.nan, n, "one side is the same for every data set"
    return float(spearmanr(k, f).statistic), n, ""


_SERIES = (
    ("d* (best mean AUC)", "best", "circle", "#222222"),
    ("elbow of the normal validation error", "elbow", "square", "#0072B2"),
    ("image intrinsic dim. (TwoNN)", "twonn", "diamond", "#D55E00"),
    ("image intrinsic dim. (MLE)", "mle", "triangle-up", "#009E73"),
)


def known_answer(ctx: Ctx) -> Plot:
    """Each stratum's d*, elbow and image intrinsic dimension against its known dimension
    (log2 axes, the diagonal where they agree; d*'s bar spans the latent_dims within
    reach of it)."""
    rows = known_rows(ctx)
    if not rows:
        raise NotAvailable("known answer", "no completed trial carries known_dim")
    fig = Grid(1, 1)
    known = [r.known_dim for r in rows]
    text = [r.stratum for r in rows]
    values_seen: list[float] = list(known)
    for label, attr, symbol, colour in _SERIES:
        y = [getattr(r, attr) for r in rows]
        y = [float(v) if v is not None and math.isfinite(float(v)) else None for v in y]
        values_seen += [v for v in y if v is not None]
        trace = dict(
            type="scatter", mode="markers", name=label, x=known, y=y, text=text,
            marker=dict(symbol=symbol, size=10, color=colour, opacity=0.85),
            hovertemplate="%{text}<br>known %{x}<br>" + label + " %{y}<extra></extra>",
        )  # fmt: skip
        if attr == "best":
            plus = [max(r.best_set) - r.best if r.best_set and r.best else 0 for r in rows]
            minus = [r.best - min(r.best_set) if r.best_set and r.best else 0 for r in rows]
            trace["error_y"] = dict(type="data", symmetric=False, array=plus, arrayminus=minus,
                                    thickness=1.2, width=4, color=colour)  # fmt: skip
        fig.add(trace)
    lo, hi = max(0.5, min(values_seen) / 1.5), max(values_seen) * 1.5
    fig.add(dict(type="scatter", mode="lines", x=[lo, hi], y=[lo, hi], name="= known dimension",
                 line=dict(color="#999999", dash="dot", width=1), hoverinfo="skip"))  # fmt: skip
    dims = sorted({int(d) for d in ctx.done["latent_dim"]}) if len(ctx.done) else []
    fig.x().update(log2_axis(known, "known dimension of the normal images (log2)"))
    fig.y().update(log2_axis(dims or known, "latent_dim / dimension (log2)"))
    return fig.plot(
        caption="Known dimension (x) against what the study found (y). d*'s bar spans the "
        "latent_dims within reach of it; on the dotted diagonal a finding equals the known "
        "dimension.",
        height=460,
        legend=dict(orientation="h", y=-0.2),
        margin=dict(l=70, r=20, t=30, b=110),
    )
