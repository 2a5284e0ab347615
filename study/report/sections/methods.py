"""Section 5: the models side by side in the paper's Table 2 format."""

from __future__ import annotations

import math

from ae4ad.metrics import direction, get_metric
from study.report.context import Ctx
from study.report.figures.style import METRIC_LABELS
from study.report.fragments import esc, note
from study.report.load import norm_label
from study.report.page import Page

ANCHOR, TITLE = "methods", "5. Methods comparison"
PAPER_METHODS = ("ae", "vae", "memae", "ceae", "ae_dopt")

Cells = dict[tuple[str, str], tuple[float | None, str]]  # (data set, metric) -> (mean, text)


def section(ctx: Ctx, page: Page) -> str:
    models = list(ctx.model_index)
    if len(models) < 2:
        return note(
            f"One model only ({esc(', '.join(models)) or '–'}): a methods comparison needs several."
        )
    datasets = list(ctx.colours)
    metrics = [m for m in ("auc", "ap", "pixel_ap", "best_dice") if m in ctx.summary]
    rows = _study_rows(ctx, datasets, metrics) + _paper_rows(ctx, datasets, metrics)
    best: dict[tuple[str, str], float] = {}
    for _, _, cells in rows:
        for key, (mean, _) in cells.items():
            if mean is not None:
                better = min if direction(key[1]) == "min" else max
                best[key] = better(best.get(key, get_metric(key[1]).worst()), round(mean, 10))
    head1 = "".join(f"<th colspan='{len(metrics)}'>{esc(ds)}</th>" for ds in datasets)
    head2 = "".join(f"<th>{METRIC_LABELS[m]}</th>" for _ in datasets for m in metrics)
    body_rows = []
    for label, cls, cells in rows:
        tds = []
        for ds in datasets:
            for m in metrics:
                if (ds, m) not in cells:
                    tds.append("<td class='num'>–</td>")
                    continue
                mean, txt = cells[(ds, m)]
                if mean is not None and round(mean, 10) == best[(ds, m)]:
                    txt = f"<b>{txt}</b>"
                tds.append(f"<td class='num'>{txt}</td>")
        body_rows.append(f"<tr class='{cls}'><td>{esc(label)}</td>{''.join(tds)}</tr>")
    return (
        "<p class='note'>Table 2 format: mean ± std ×100 over seeds at a latent dimension "
        "shared by all models and at each model's best one; the best study value per column "
        "in <b>bold</b>. Grey rows: the paper's Table 2 for a data set of the same label.</p>"
        f"<div class='tablewrap'><table class='data t2'><thead><tr><th rowspan='2'>method"
        f"</th>{head1}</tr><tr>{head2}</tr></thead><tbody>{''.join(body_rows)}</tbody>"
        "</table></div>"
    )


def _study_rows(ctx: Ctx, datasets: list[str], metrics: list[str]) -> list[tuple[str, str, Cells]]:
    """Each model at a latent_dim all models share (16 when present) and at its best."""
    lookup = {}
    for m in metrics:
        t = ctx.summary[m]
        lookup[m] = {
            (st, int(d)): (mu, sd)
            for st, d, mu, sd in zip(t["_stratum"], t["latent_dim"], t["mean"], t["std"])
        }
    stratum_of = {(v.dataset, v.model): v.stratum for v in ctx.verdicts}
    best_d = {(v.dataset, v.model): v.best_latent_dim for v in ctx.verdicts}
    by_model = ctx.done.groupby("model")
    common = sorted(set.intersection(*[set(g["latent_dim"]) for _, g in by_model]))
    common_d = 16 if 16 in common else (common[len(common) // 2] if common else None)
    rows = []
    for model in ctx.model_index:
        settings = [("common", common_d)] if common_d is not None else []
        settings.append(("best", None))
        for kind, d in settings:
            cells: Cells = {}
            for ds in datasets:
                dd = d if kind == "common" else best_d.get((ds, model))
                key = (stratum_of.get((ds, model)), dd)
                for m in metrics:
                    if key not in lookup[m]:
                        continue
                    mean, std = (100 * v for v in lookup[m][key])
                    txt = f"{mean:.1f}" + (f" ± {std:.1f}" if math.isfinite(std) else "")
                    if kind == "best":
                        txt += f" <span class='muted'>(d={dd})</span>"
                    cells[(ds, m)] = (mean, txt)
            label = f"{model} (d = {common_d})" if kind == "common" else f"{model} (best d)"
            rows.append((label, "", cells))
    return rows


def _paper_rows(ctx: Ctx, datasets: list[str], metrics: list[str]) -> list[tuple[str, str, Cells]]:
    """The paper's Table 2 rows for the data sets of a paper label."""
    paper2 = ctx.paper2
    if paper2 is None:
        return []
    rows = []
    for method in PAPER_METHODS:
        cells: Cells = {}
        for ds in datasets:
            pp = paper2[(paper2["_norm"] == norm_label(ds)) & (paper2["method"] == method)]
            for r in pp.itertuples():
                if r.metric in metrics:
                    cells[(ds, r.metric)] = (None, f"{r.mean:.1f} ± {r.std:.1f}")
        if cells:
            lab = "paper: AE, d_opt" if method == "ae_dopt" else f"paper: {method} (d = 16)"
            rows.append((lab, "paper", cells))
    return rows
