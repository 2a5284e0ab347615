"""Metrics against latent_dim: detection (AUC, AP), pixel metrics, reconstruction errors,
and latent statistics against AUC."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from ae4ad.metrics import direction, get_metric
from study.report.context import Ctx
from study.report.figures.grid import (
    Grid,
    NotAvailable,
    Plot,
    arr,
    axis_name,
    colour_scale,
    grid_shape,
    log2_axis,
    title,
    vspace,
)
from study.report.figures.style import (
    ENTROPY_LABELS,
    LEGEND_BELOW,
    MARGIN_LEGEND_BELOW,
    MAX_PANELS,
    METRIC_LABELS,
    MODEL_DASHES,
    MODEL_SYMBOLS,
    RECON_SPLITS,
    SCORE_UNITS,
)
from study.report.fragments import esc
from study.report.load import norm_label
from study.report.values import finite, has_values

DETECTION_CAPTION = (
    "Mean ± std over seeds (lines, error bars); faint dots are single trials (hover for "
    "the config); ★ marks the best latent dimension; dotted lines are the paper's numbers "
    "for a data set of the same label."
)


def detection(ctx: Ctx) -> Plot:
    """AUC and AP against latent_dim per stratum, with the paper's curves."""
    if ctx.done.empty:
        raise NotAvailable("AUC and AP curves")
    metrics = [m for m in ("auc", "ap") if has_values(ctx.done, m)]
    plot = metric_curves(ctx, metrics, ctx.paper1, "Image-level detection vs latent dimension")
    plot.caption = DETECTION_CAPTION
    return plot


def pixel(ctx: Ctx) -> Plot:
    """Pixel AP and best Dice against latent_dim, for the data sets with masks."""
    metrics = [m for m in ("pixel_ap", "best_dice") if has_values(ctx.done, m)]
    if not metrics:
        raise NotAvailable("Pixel AP and best Dice", "no data set with masks")
    sub = ctx.done[ctx.done[metrics].apply(finite).notna().any(axis=1)]
    plot = metric_curves(
        replace(ctx, done=sub), metrics, None, "Pixel-level metrics vs latent dimension"
    )
    plot.caption = "Mean ± std over seeds; only data sets with anomaly masks."
    return plot


def metric_curves(
    ctx: Ctx, metrics: Sequence[str], paper: pd.DataFrame | None, heading: str
) -> Plot:
    """One panel per metric: mean ± std over seeds per stratum, the best latent_dim, the
    single trials and, for a data set of a paper label, the paper's numbers."""
    fig = Grid(
        1, len(metrics), titles=[f"{METRIC_LABELS.get(m, m)} vs latent dimension" for m in metrics]
    )
    dims_all = set(int(d) for d in ctx.done["latent_dim"].unique())
    for j, metric in enumerate(metrics, start=1):
        label = METRIC_LABELS.get(metric, metric)
        for stratum, g in ctx.agg(metric).groupby("_stratum", sort=False):
            _stratum_curve(ctx, fig, j, metric, str(stratum), g)
        if paper is not None:
            dims_all |= _paper_curves(ctx, fig, j, metric, paper)
        fig.y(1, j)["title"] = title(label)
    for j in range(1, len(metrics) + 1):
        fig.x(1, j).update(log2_axis(sorted(dims_all)))
    n_legend = sum(1 for t in fig.data if t.get("showlegend"))
    # a long legend goes to the right (plotly's default), a short one below the plot
    below = dict(legend=LEGEND_BELOW, margin=MARGIN_LEGEND_BELOW) if n_legend <= 8 else {}
    return fig.plot(height=470, title=dict(text=heading, x=0.01), hovermode="closest", **below)


def mean_sd_trace(
    g: pd.DataFrame,
    name: str,
    colour: str,
    k: int,
    label: str,
    hover_head: str,
    mode: str = "lines+markers",
) -> dict:
    """A mean ± sd curve over latent_dim (``g``: columns latent_dim, mean, std, count), in
    the ``k``-th dash and marker style; ``hover_head`` is escaped HTML."""
    std = g["std"].fillna(0).to_numpy()
    return dict(
        type="scatter",
        x=g["latent_dim"].tolist(),
        y=arr(g["mean"]),
        error_y=dict(type="data", array=arr(std), visible=True, thickness=1.2, width=4),
        mode=mode,
        name=name,
        legendgroup=name,
        line=dict(color=colour, dash=MODEL_DASHES[k % len(MODEL_DASHES)], width=2.4),
        marker=dict(symbol=MODEL_SYMBOLS[k % len(MODEL_SYMBOLS)], size=8),
        customdata=[[round(float(s), 4), int(n)] for s, n in zip(std, g["count"])],
        hovertemplate=f"{hover_head}<br>d = %{{x}}<br>{label} = %{{y:.3f}} ± "
        "%{customdata[0]:.3f} (n = %{customdata[1]})<extra></extra>",
    )


def _stratum_curve(ctx: Ctx, fig: Grid, j: int, metric: str, stratum: str, g: pd.DataFrame) -> None:
    label = METRIC_LABELS.get(metric, metric)
    ds, model = g["dataset"].iloc[0], g["model"].iloc[0]
    colour = ctx.colours[ds]
    k = ctx.model_index[model]
    trace = mean_sd_trace(g, stratum, colour, k, label, f"<b>{esc(stratum)}</b>")
    fig.add(trace | dict(showlegend=j == 1), 1, j)
    best = g.loc[g["mean"].idxmin() if direction(metric) == "min" else g["mean"].idxmax()]
    fig.add(
        dict(
            type="scatter",
            x=[int(best["latent_dim"])],
            y=[float(best["mean"])],
            mode="markers",
            name=f"best d ({stratum})",
            legendgroup=stratum,
            showlegend=False,
            marker=dict(symbol="star", size=18, color=colour, line=dict(color="black", width=1)),
            hovertemplate=f"<b>best d for {esc(stratum)}</b>: %{{x}}<br>{label} = "
            "%{y:.3f}<extra></extra>",
        ),
        1,
        j,
    )
    pts = ctx.done[ctx.done["_stratum"] == stratum]
    fig.add(
        dict(
            type="scatter",
            x=pts["latent_dim"].tolist(),
            y=arr(pts[metric], 4),
            mode="markers",
            legendgroup=stratum,
            showlegend=False,
            name=f"trials ({stratum})",
            marker=dict(color=colour, size=5, opacity=0.35),
            text=ctx.hover.loc[pts.index].tolist(),
            hovertemplate=f"{label} = %{{y:.3f}}<br>%{{text}}<extra></extra>",
        ),
        1,
        j,
    )


def _paper_curves(ctx: Ctx, fig: Grid, j: int, metric: str, paper: pd.DataFrame) -> set[int]:
    """The paper's curve of every data set of a paper label; returns their latent_dims."""
    dims: set[int] = set()
    for ds in ctx.colours:
        pp = paper[(paper["_norm"] == norm_label(ds)) & (paper["metric"] == metric)]
        if pp.empty:
            continue
        pp = pp.sort_values("latent_dim")
        fig.add(
            dict(
                type="scatter",
                x=pp["latent_dim"].tolist(),
                y=arr(pp["mean"] / 100),
                mode="lines+markers",
                name=f"paper: {pp['dataset'].iloc[0]} (AE)",
                legendgroup=f"paper-{ds}",
                showlegend=j == 1,
                line=dict(color=ctx.colours[ds], dash="dot", width=1.5),
                marker=dict(size=5, symbol="circle-open"),
                opacity=0.7,
                hovertemplate="paper, d = %{x}: %{y:.3f}<extra></extra>",
            ),
            1,
            j,
        )
        dims |= set(int(d) for d in pp["latent_dim"])
    return dims


def entropy(ctx: Ctx) -> Plot:
    """A latent statistic against AUC per data set, coloured by latent_dim; a menu picks
    the statistic."""
    cols = [c for c in ENTROPY_LABELS if has_values(ctx.done, c)]
    if not cols:
        raise NotAvailable("Latent statistics", "no latent_entropy_* columns")
    default = ctx.entropy_col if ctx.entropy_col in cols else cols[0]
    auc_label = get_metric("auc").axis_title
    datasets = list(ctx.colours)
    nr, nc = grid_shape(len(datasets))
    height = max(430, 360 * nr + 90)
    fig = Grid(nr, nc, titles=datasets, hspace=0.07, vspace=vspace(height, nr))
    df = ctx.done
    log_d = np.log2(df["latent_dim"].astype(float)).round(4)
    dims = sorted(int(d) for d in df["latent_dim"].unique())
    traces_x: dict[str, list] = {c: [] for c in cols}
    for i, ds in enumerate(datasets):
        r, c = divmod(i, nc)
        for model, g in df[df["dataset"] == ds].groupby("model", sort=False):
            k = ctx.model_index[model]
            fig.add(
                dict(
                    type="scatter",
                    x=arr(g[default]),
                    y=arr(g["auc"], 4),
                    mode="markers",
                    name=f"{ds}/{model}",
                    showlegend=len(ctx.model_index) > 1,
                    marker=dict(
                        color=log_d.loc[g.index].tolist(),
                        coloraxis="coloraxis",
                        size=8,
                        symbol=MODEL_SYMBOLS[k % len(MODEL_SYMBOLS)],
                        opacity=0.85,
                        line=dict(width=0.5, color="#333"),
                    ),
                    text=ctx.hover.loc[g.index].tolist(),
                    hovertemplate="latent statistic = %{x:.3g}<br>"
                    f"{auc_label} = %{{y:.3f}}<br>%{{text}}<extra></extra>",
                ),
                r + 1,
                c + 1,
            )
            for col in cols:
                traces_x[col].append(arr(g[col]))
        fig.y(r + 1, 1)["title"] = title(auc_label)
    fig.hide_unused(len(datasets))
    for k in range(1, len(datasets) + 1):
        fig.layout[axis_name("xaxis", k)]["title"] = title(ENTROPY_LABELS[default])
    buttons = []
    for col in cols:
        relabel = {
            f"{axis_name('xaxis', k)}.title.text": ENTROPY_LABELS[col]
            for k in range(1, len(datasets) + 1)
        }
        buttons.append(dict(label=col, method="update", args=[{"x": traces_x[col]}, relabel]))
    return fig.plot(
        caption="Each dot is a completed trial (hover for its config). Pick the latent "
        "statistic with the menu at the top right. The paper predicts AUC to fall as entropy "
        "grows beyond the best latent dimension.",
        height=height,
        title=dict(text="Latent statistic vs AUC, coloured by latent dimension", x=0.01),
        coloraxis=_dims_colour_axis(dims),
        updatemenus=[
            dict(
                buttons=buttons,
                direction="down",
                x=1.0,
                xanchor="right",
                y=1.0,
                yanchor="bottom",
                pad=dict(b=30),
                showactive=True,
                active=cols.index(default),
            )
        ],
        legend=LEGEND_BELOW,
        margin={**MARGIN_LEGEND_BELOW, "t": 90},
    )


def _dims_colour_axis(dims: Sequence[int]) -> dict:
    """A Viridis colour axis over log2(latent_dim), ticks at the latent_dims."""
    lo, hi = math.log2(dims[0]), math.log2(dims[-1])
    return dict(
        colorscale=colour_scale("Viridis"),
        cmin=lo,
        cmax=hi if hi > lo else lo + 1,
        colorbar=dict(
            title=title("d"),
            tickmode="array",
            tickvals=[round(math.log2(d), 4) for d in dims],
            ticktext=[str(d) for d in dims],
            len=0.9,
        ),
    )


def score_unit(df: pd.DataFrame) -> str:
    if "score" in df.columns and df["score"].nunique() == 1:
        return SCORE_UNITS.get(str(df["score"].iloc[0]), "reconstruction error")
    return "reconstruction error"


def recon(ctx: Ctx) -> Plot:
    """Reconstruction error by split against latent_dim, one panel per stratum (the
    paper's Figure 3)."""
    splits = [s for s in RECON_SPLITS if has_values(ctx.done, s[0])]
    if not splits:
        raise NotAvailable("Reconstruction errors", "no recon_error_* columns")
    strata = [v.stratum for v in ctx.verdicts][:MAX_PANELS]
    nr, nc = grid_shape(len(strata))
    height = max(400, 340 * nr + 90)
    fig = Grid(nr, nc, titles=strata, hspace=0.07, vspace=vspace(height, nr))
    unit = score_unit(ctx.done)
    for i, stratum in enumerate(strata):
        r, c = divmod(i, nc)
        for col, label, colour, dash in splits:
            a = ctx.agg(col, stratum)
            if a.empty:
                continue
            fig.add(
                dict(
                    type="scatter",
                    x=a["latent_dim"].tolist(),
                    y=arr(a["mean"], 6),
                    name=label,
                    legendgroup=label,
                    showlegend=i == 0,
                    mode="lines+markers",
                    line=dict(color=colour, dash=dash, width=2.2),
                    marker=dict(size=6),
                    error_y=dict(
                        type="data",
                        array=arr(a["std"].fillna(0), 6),
                        visible=True,
                        thickness=1,
                        width=3,
                    ),
                    hovertemplate=f"{label}<br>d = %{{x}}<br>{unit} = %{{y:.4g}}<extra></extra>",
                ),
                r + 1,
                c + 1,
            )
        dims = ctx.done.loc[ctx.done["_stratum"] == stratum, "latent_dim"].unique()
        fig.x(r + 1, c + 1).update(log2_axis(dims))
        if c == 0:
            fig.y(r + 1, 1)["title"] = title(unit)
    fig.hide_unused(len(strata))
    n = len(ctx.verdicts)
    more = f" First {len(strata)} of {n} strata." if n > len(strata) else ""
    return fig.plot(
        caption="Mean ± std over seeds of the per-image reconstruction error. Over capacity "
        "the abnormal error falls towards the normal one: the autoencoder starts to "
        "reconstruct anomalies too." + more,
        height=height,
        legend=LEGEND_BELOW,
        margin=MARGIN_LEGEND_BELOW,
        title=dict(text="Reconstruction error by split (the paper's Figure 3)", x=0.01),
    )
