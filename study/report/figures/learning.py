"""Learning curves: test AUC per evaluation of every trial (history.parquet)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from plotly.colors import sample_colorscale

from ae4ad.metrics import get_metric
from study.report.context import Ctx
from study.report.figures.grid import Grid, NotAvailable, Plot, arr, grid_shape, title, vspace
from study.report.figures.style import MAX_PANELS
from study.report.values import finite

WHAT = "Learning curves"
METRIC = "auc"  # the metric drawn against epoch
LABEL = get_metric(METRIC).axis_title


def learning_curves(ctx: Ctx) -> Plot:
    """AUC against epoch per trial, one panel per stratum, coloured by latent_dim; at
    most ``ctx.max_curves`` trials (a fixed random subset beyond that)."""
    h, n_trials = _history(ctx)
    order = [v.stratum for v in ctx.verdicts] + list(h["_stratum"].unique())
    present = set(h["_stratum"])
    strata = [s for s in dict.fromkeys(order) if s in present][:MAX_PANELS]
    nr, nc = grid_shape(len(strata))
    height = max(380, 320 * nr + 90)
    fig = Grid(nr, nc, titles=strata, hspace=0.07, vspace=vspace(height, nr))
    h["latent_dim"] = h["latent_dim"].astype(int)
    dims = sorted(h["latent_dim"].unique())
    lo, hi = math.log2(dims[0]), math.log2(dims[-1])
    span = hi - lo if hi > lo else 1.0
    colours = {d: sample_colorscale("Viridis", [(math.log2(d) - lo) / span])[0] for d in dims}
    shown_legend: set[int] = set()
    # the x axis spans the planned epochs: trials stopped early end visibly short of it
    t = ctx.all_trials
    planned = finite(t["epochs"]).max() if "epochs" in t.columns else math.nan
    max_epoch = float(np.nanmax([h["epoch"].max(), planned]))
    for i, stratum in enumerate(strata):
        r, c = divmod(i, nc)
        g = h[h["_stratum"] == stratum]
        for d, gd in g.groupby("latent_dim", sort=True):
            _add_curves(fig, r + 1, c + 1, int(d), gd, colours[int(d)], shown_legend)
        fig.x(r + 1, c + 1)["title"] = title("epoch")
        fig.x(r + 1, c + 1)["range"] = [0, max_epoch * 1.04]
        if c == 0:
            fig.y(r + 1, 1)["title"] = title(LABEL)
    fig.hide_unused(len(strata))
    n_shown = h["trial_id"].nunique()
    cap = f"{n_shown} of {n_trials} trials shown"
    cap += " (a fixed random subset)." if n_shown < n_trials else "."
    cap += " A trial with a single evaluation (e.g. stopped at the first rung) is a dot."
    return fig.plot(
        caption=cap,
        height=height,
        title=dict(text=f"Learning curves: test {LABEL} per evaluation", x=0.01),
        legend=dict(title=title("latent dim")),
    )


def _history(ctx: Ctx) -> tuple[pd.DataFrame, int]:
    """The history rows of the trials drawn, with their stratum, latent_dim, seed and
    status; and the number of trials with a history."""
    hist = ctx.run.history
    if hist is None or not {"trial_id", "epoch", METRIC} <= set(hist.columns):
        why = ctx.run.notes.get("history", "history.parquet has no trial_id/epoch/auc")
        raise NotAvailable(WHAT, why)
    t = ctx.all_trials
    if "trial_id" not in t.columns:
        raise NotAvailable(WHAT, "the trials table has no trial_id")
    h = hist[["trial_id", "epoch", METRIC]].copy()
    h["trial_id"] = h["trial_id"].astype(str)
    h[METRIC] = finite(h[METRIC])
    h["epoch"] = finite(h["epoch"])
    h = h.dropna(subset=["epoch"])
    keep = ["trial_id", "_stratum", "latent_dim", "seed", "status"]
    meta = t[[c for c in keep if c in t.columns]].drop_duplicates("trial_id").copy()
    meta["trial_id"] = meta["trial_id"].astype(str)
    h = h.merge(meta, on="trial_id", how="inner")
    if not {"latent_dim", "_stratum"} <= set(h.columns):
        raise NotAvailable(WHAT, "the trials table has no latent_dim")
    h = h[finite(h["latent_dim"]) > 0]
    if h.empty:
        raise NotAvailable(WHAT, "no history rows match the trials")
    ids = pd.Series(h["trial_id"].unique())
    shown = ids if len(ids) <= ctx.max_curves else ids.sample(ctx.max_curves, random_state=0)
    h = h[h["trial_id"].isin(set(shown))].sort_values(["trial_id", "epoch"], kind="stable")
    return h, len(ids)


def _add_curves(
    fig: Grid, row: int, col: int, d: int, gd: pd.DataFrame, colour: str, shown_legend: set[int]
) -> None:
    """The trials of one latent_dim in one panel: one line trace with gaps between
    trials, and a marker trace for trials with a single evaluation."""
    xs: list = []
    ys: list = []
    texts: list = []
    dots: tuple[list, list, list] = ([], [], [])  # trials with one evaluation
    for tid, gt in gd.groupby("trial_id", sort=False):
        seed = gt["seed"].iloc[0] if "seed" in gt.columns else ""
        status = gt["status"].iloc[0] if "status" in gt.columns else ""
        label = f"trial {tid}<br>d = {d}, seed {seed}<br>{status}"
        if len(gt) == 1:  # a line needs two points: a marker instead
            dots[0].append(gt["epoch"].iloc[0])
            dots[1].extend(arr(gt[METRIC], 4))
            dots[2].append(label)
            continue
        xs += [*gt["epoch"].tolist(), None]
        ys += [*arr(gt[METRIC], 4), None]
        texts += [label] * len(gt) + [None]
    common = dict(
        type="scatter",
        name=f"d = {d}",
        legendgroup=f"d{d}",
        opacity=0.8,
        hovertemplate=f"%{{text}}<br>epoch %{{x}}: {LABEL} %{{y:.3f}}<extra></extra>",
    )
    if dots[0]:
        fig.add(
            dict(
                common,
                x=dots[0],
                y=dots[1],
                text=dots[2],
                mode="markers",
                showlegend=not xs and d not in shown_legend,
                marker=dict(color=colour, size=6, line=dict(width=0)),
            ),
            row,
            col,
        )
    if xs:
        fig.add(
            dict(
                common,
                x=xs,
                y=ys,
                text=texts,
                mode="lines",
                showlegend=d not in shown_legend,
                line=dict(color=colour, width=1.3),
            ),
            row,
            col,
        )
    shown_legend.add(d)
