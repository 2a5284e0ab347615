"""Section 1: AUC and AP against latent_dim, and a table in the paper's Table 1 format."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from ae4ad.metrics import direction
from study.report import figures
from study.report.context import Ctx
from study.report.figures.style import METRIC_LABELS
from study.report.fragments import esc, na
from study.report.load import norm_label
from study.report.page import Page
from study.report.values import has_values

ANCHOR, TITLE = "detection", "1. Detection vs latent dimension"


def section(ctx: Ctx, page: Page) -> str:
    try:
        plot = figures.build(ctx, "auc_vs_latent_dim")
    except figures.NotAvailable as exc:
        return na(exc.what, exc.why)
    metrics = [m for m in ("auc", "ap") if has_values(ctx.done, m)]
    return page.figure(plot) + table1(ctx, [*metrics, "pixel_ap", "best_dice"], ctx.paper1)


def _cells(dims: Sequence[int], values: dict[int, tuple[float, float]], metric: str) -> str:
    """Mean ± std per latent_dim; the best (by the metric's direction) in bold, the
    second underlined."""
    higher = direction(metric) != "min"
    means = sorted({round(m, 10) for m, _ in values.values() if math.isfinite(m)}, reverse=higher)
    first = means[0] if means else None
    second = means[1] if len(means) > 1 else None
    out = []
    for d in dims:
        if d not in values or not math.isfinite(values[d][0]):
            out.append("<td class='num'>–</td>")
            continue
        m, s = values[d]
        txt = f"{m:.1f}" + (f" ± {s:.1f}" if math.isfinite(s) else "")
        if first is not None and round(m, 10) == first:
            txt = f"<b>{txt}</b>"
        elif second is not None and round(m, 10) == second:
            txt = f"<u>{txt}</u>"
        out.append(f"<td class='num'>{txt}</td>")
    return "".join(out)


def table1(ctx: Ctx, metrics: Sequence[str], paper: pd.DataFrame | None) -> str:
    """Mean ± std ×100 per latent_dim (columns descending, as in the paper's Table 1);
    best bold, second underlined; the paper's row under a study row of the same label."""
    dims = sorted({int(d) for d in ctx.done["latent_dim"].unique()}, reverse=True)
    if paper is not None:
        matched = paper[paper["_norm"].isin({norm_label(d) for d in ctx.colours})]
        dims = sorted(set(dims) | {int(d) for d in matched["latent_dim"].unique()}, reverse=True)
    rows = []
    paper_shown: set[tuple[str, str]] = set()  # the paper's row once per data set and metric
    for v in ctx.verdicts:
        for metric in metrics:
            a = ctx.agg(metric, v.stratum)
            if a.empty:
                continue
            vals = {int(r.latent_dim): (100 * r.mean, 100 * r.std) for r in a.itertuples()}
            rows.append(
                f"<tr><td>{esc(v.dataset)}</td><td>{esc(v.model)}</td>"
                f"<td>{METRIC_LABELS.get(metric, metric)}</td>{_cells(dims, vals, metric)}</tr>"
            )
            if paper is None or (v.dataset, metric) in paper_shown:
                continue
            paper_shown.add((v.dataset, metric))
            pp = paper[(paper["_norm"] == norm_label(v.dataset)) & (paper["metric"] == metric)]
            if not pp.empty:
                pvals = {int(r.latent_dim): (r.mean, r.std) for r in pp.itertuples()}
                rows.append(
                    f"<tr class='paper'><td>{esc(pp['dataset'].iloc[0])}</td>"
                    f"<td>paper (AE)</td><td>{METRIC_LABELS.get(metric, metric)}</td>"
                    f"{_cells(dims, pvals, metric)}</tr>"
                )
    if not rows:
        return ""
    head = "".join(f"<th>d = {d}</th>" for d in dims)
    return (
        "<h3>Table 1 format: mean ± std over seeds, ×100</h3>"
        "<p class='note'>Best per row in <b>bold</b>, second <u>underlined</u>. Grey rows are "
        "the paper's published numbers (Cai et al. 2024, Table 1, 3 runs) for a data set of "
        "the same label.</p>"
        f"<div class='tablewrap'><table class='data t1'><thead><tr><th>data set</th>"
        f"<th>model</th><th>metric</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
        "</table></div>"
    )
