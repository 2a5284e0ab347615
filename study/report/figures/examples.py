"""Example reconstructions (examples.json) and anomaly-score distributions
(scores.parquet) at the small, best and large latent_dim of a stratum."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from study import hypothesis as H
from study.report.context import Ctx
from study.report.figures.grid import (
    Grid,
    NotAvailable,
    Plot,
    arr,
    colour_scale,
    title,
    typed,
    vspace,
)
from study.report.figures.style import LEGEND_BELOW, MARGIN_LEGEND_BELOW, MAX_EXAMPLE_STRATA
from study.report.fragments import esc
from study.report.values import subsample

EXAMPLES_CAPTION = (
    "Rows: normal and abnormal test images. Columns: input, mask (when annotated), and "
    "the reconstruction and anomaly map at the smallest, best and largest latent "
    "dimension (first seed)."
)


def shown_strata(ctx: Ctx) -> list[H.StratumVerdict]:
    """Up to MAX_EXAMPLE_STRATA strata covering the data sets first: the first model of
    every data set, then the second, and so on (in the order of the verdicts)."""
    seen: dict[str, int] = {}
    rank = []
    for i, v in enumerate(ctx.verdicts):
        rank.append((seen.get(v.dataset, 0), i))
        seen[v.dataset] = seen.get(v.dataset, 0) + 1
    chosen = sorted(sorted(rank)[:MAX_EXAMPLE_STRATA], key=lambda r: r[1])
    return [ctx.verdicts[i] for _, i in chosen]


def pick_trials(ctx: Ctx, v: H.StratumVerdict) -> list[tuple[str, int, str]]:
    """(trial id, latent_dim, "small" | "best" | "large") of the trials whose examples
    are shown for a stratum: the first seed with examples at each latent_dim."""
    ex = ctx.run.examples
    if ex is None or "trial_id" not in ctx.done.columns:
        return []
    g = ctx.done[ctx.done["_stratum"] == v.stratum]
    g = g[g["trial_id"].astype(str).map(lambda t: t in ex)]
    if g.empty:
        return []
    dims = sorted(g["latent_dim"].unique())
    wanted = [("small", dims[0]), ("best", v.best_latent_dim), ("large", dims[-1])]
    out, seen = [], set()
    for label, d in wanted:
        if d is None or d in seen:
            continue
        gd = g[g["latent_dim"] == d]
        if "seed" in gd.columns:
            gd = gd.sort_values("seed", kind="stable")
        for tid in gd["trial_id"].astype(str):
            if ex.get(tid) is not None:
                seen.add(d)
                out.append((tid, int(d), label))
                break
    return out


def _image_2d(a: Any, max_side: int = 64) -> np.ndarray | None:
    img = np.asarray(a, dtype=np.float32)
    if img.ndim == 3:
        img = img.mean(axis=0)
    if img.ndim != 2 or img.size == 0:
        return None
    step = max(1, math.ceil(max(img.shape) / max_side))
    if step > 1:
        h, w = (img.shape[0] // step) * step, (img.shape[1] // step) * step
        img = img[:h, :w].reshape(h // step, step, w // step, step).mean(axis=(1, 3))
    return np.round(img, 3).astype(np.float32)


def examples(ctx: Ctx, stratum: str, n_per_class: int = 3) -> Plot | None:
    """One row per test image; columns: input, mask, and reconstruction and anomaly map at
    the small, best and large latent dimension. None when the stratum has no examples."""
    if ctx.run.examples is None:
        raise NotAvailable("Example reconstructions", ctx.run.notes.get("examples", ""))
    v = next((v for v in ctx.verdicts if v.stratum == stratum), None)
    picks = pick_trials(ctx, v) if v is not None else []
    if not picks:
        return None
    entries = {tid: ctx.run.examples.get(tid) or {} for tid, _, _ in picks}
    first = entries[picks[0][0]]
    labels = list(first.get("labels") or [])
    rows_idx = [i for i, y in enumerate(labels) if y == 0][:n_per_class]
    rows_idx += [i for i, y in enumerate(labels) if y == 1][:n_per_class]
    if not rows_idx:
        return None
    col_specs: list[tuple[str, str, str | None]] = [("input", "inputs", None)]
    if first.get("masks") is not None:
        col_specs.append(("mask", "masks", None))
    for tid, d, label in picks:
        col_specs.append((f"reconstruction<br>d = {d} ({label})", "reconstructions", tid))
        col_specs.append((f"anomaly map<br>d = {d}", "anomaly_maps", tid))
    fig = Grid(
        len(rows_idx), len(col_specs), titles=[c[0] for c in col_specs], hspace=0.008,
        vspace=0.02, title_size=11,
    )  # fmt: skip
    maps = []
    for _, key, tid in col_specs:
        if key == "anomaly_maps":
            a = entries[tid].get(key) or []
            maps += [np.asarray(a[i], dtype=np.float32).ravel() for i in rows_idx if i < len(a)]
    vmax = float(np.nanpercentile(np.concatenate(maps), 99)) if maps else 1.0
    if not math.isfinite(vmax) or vmax <= 0:
        vmax = 1.0
    for c, (clabel, key, tid) in enumerate(col_specs, start=1):
        images = (entries[tid] if tid is not None else first).get(key) or []
        for r, i in enumerate(rows_idx, start=1):
            _image_cell(fig, r, c, clabel, key, images[i] if i < len(images) else None)
            if c == 1:
                kind = "normal" if labels[i] == 0 else "abnormal"
                fig.y(r, c)["title"] = dict(text=f"{kind} #{i}", font=dict(size=12))
    return fig.plot(
        caption=EXAMPLES_CAPTION,
        height=min(1500, 118 * len(rows_idx) + 130),
        title=dict(text=f"{esc(v.stratum)}: test images, reconstructions and anomaly maps", x=0.01),
        coloraxis=dict(colorscale=colour_scale("gray"), cmin=-1, cmax=1, showscale=False),
        coloraxis2=dict(
            colorscale=colour_scale("Inferno"),
            cmin=0,
            cmax=vmax,
            colorbar=dict(title=title("score"), len=0.6, thickness=14),
        ),
        margin=dict(l=80, r=20, t=100, b=10),
    )


def _image_cell(fig: Grid, r: int, c: int, clabel: str, key: str, image: Any) -> None:
    """One image as a heatmap in subplot (r, c), square pixels, no axes."""
    fig.x(r, c)["visible"] = False
    fig.y(r, c).update(
        autorange="reversed",
        scaleanchor=fig.ref(r, c)[0],
        constrain="domain",
        showticklabels=False,
        showgrid=False,
        zeroline=False,
        showline=False,
        ticks="",
    )
    img = _image_2d(image) if image is not None else None
    if img is None:
        return
    what = clabel.replace("<br>", ", ")
    trace = dict(
        type="heatmap",
        z=typed(img),
        hovertemplate=f"{what}<br>x %{{x}}, y %{{y}}: %{{z:.3f}}<extra></extra>",
    )
    if key == "anomaly_maps":
        trace["coloraxis"] = "coloraxis2"
    elif key == "masks":
        trace.update(colorscale=colour_scale("gray"), zmin=0, zmax=1, showscale=False)
    else:
        trace["coloraxis"] = "coloraxis"
    fig.add(trace, r, c)


def scores(ctx: Ctx) -> Plot | None:
    """Histograms of the anomaly scores of normal and abnormal test images at the small,
    best and large latent_dim of the strata with examples (pooled over seeds)."""
    sc = ctx.run.scores
    if sc is None or not {"trial_id", "score", "label"} <= set(sc.columns):
        raise NotAvailable("Score distributions", ctx.run.notes.get("scores", "no scores table"))
    rows = []
    for v in shown_strata(ctx):
        g = ctx.done[ctx.done["_stratum"] == v.stratum]
        if g.empty:
            continue
        dims = sorted(g["latent_dim"].unique())
        picks = dict.fromkeys([dims[0], v.best_latent_dim, dims[-1]])
        rows.append((v, g, [d for d in picks if d is not None]))
    if not rows:
        return None
    ncol = max(len(p) for _, _, p in rows)
    titles = []
    for v, _, picks in rows:
        titles += [f"{v.stratum}, d = {d}" for d in picks] + [""] * (ncol - len(picks))
    height = 270 * len(rows) + 130
    fig = Grid(len(rows), ncol, titles=titles, vspace=vspace(height, len(rows), gap_px=60))
    sc_ids = sc["trial_id"].astype(str)
    for r, (_, g, picks) in enumerate(rows, start=1):
        for c, d in enumerate(picks, start=1):
            ids = set(g.loc[g["latent_dim"] == d, "trial_id"].astype(str))
            s = subsample(sc[sc_ids.isin(ids)], 4000)
            for lab, name, colour in ((0, "normal", "#2ca02c"), (1, "abnormal", "#d62728")):
                fig.add(
                    dict(
                        type="histogram",
                        x=arr(s.loc[s["label"] == lab, "score"]),
                        name=name,
                        legendgroup=name,
                        showlegend=r == 1 and c == 1,
                        opacity=0.6,
                        marker=dict(color=colour),
                        nbinsx=40,
                        histnorm="probability density",
                    ),
                    r,
                    c,
                )
            if r == len(rows):
                fig.x(r, c)["title"] = title("anomaly score")
        fig.y(r, 1)["title"] = title("density")
    return fig.plot(
        caption="Pooled over seeds; small, best and large latent dimension.",
        barmode="overlay",
        height=height,
        title=dict(text="Anomaly scores of normal and abnormal test images", x=0.01),
        legend=LEGEND_BELOW,
        margin=MARGIN_LEGEND_BELOW,
    )
