"""Section "Verdicts": one line per stratum, then a card per stratum with both tests,
the descriptive correlations and the label-free predictions of d* (verdicts.html)."""

from __future__ import annotations

import math

import pandas as pd

from study import hypothesis as H
from study.report.context import Ctx
from study.report.figures.style import ENTROPY_LABELS, MAX_PANELS
from study.report.fragments import na
from study.report.load import norm_label
from study.report.page import Page, template
from study.report.values import has_values

ANCHOR, TITLE = "verdicts", "Verdicts"
PAPER_RUNS = 3  # the paper's Table 1: mean and std over 3 runs


def section(ctx: Ctx, page: Page) -> str:
    if not ctx.verdicts:
        why = ctx.run.notes.get("trials", "no trial with a latent_dim and an AUC")
        return na("Hypothesis tests", why)
    return template("verdicts.html").render(
        alpha=f"{ctx.verdicts[0].alpha:g}",
        level=ctx.verdicts[0].level_text,
        cards=[_card(ctx, v) for v in ctx.verdicts],
        paper=_paper_rows(ctx),
        metrics=_metric_rows(ctx),
        robustness=_robustness(ctx),
    )


def _metric_rows(ctx: Ctx) -> dict | None:
    """The verdict per stratum x metric, and where the metrics disagree on d*."""
    if len({v.metric for v in ctx.by_metric}) < 2:
        return None
    rows, disagree = [], []
    for stratum in dict.fromkeys(v.stratum for v in ctx.by_metric):
        mine = [v for v in ctx.by_metric if v.stratum == stratum]
        for v in mine:
            rows.append(dict(stratum=stratum, metric=v.metric, verdict=v.verdict,
                             best=_best(v), p="–" if v.verdict == H.NOT_TESTED
                             else f"p {H.format_p_clause(v.p_value)}"))  # fmt: skip
        best = {v.metric: v.best_latent_dim for v in mine if v.verdict != H.NOT_TESTED}
        if len(set(best.values())) > 1:
            disagree.append(f"{stratum}: " + ", ".join(f"{m} {d}" for m, d in best.items()))
    return dict(rows=rows, disagree=disagree)


def _best(v: H.StratumVerdict) -> str:
    if v.verdict == H.NOT_TESTED or v.best_latent_dim is None:
        return "–"
    within = " {" + ", ".join(str(d) for d in v.best_set) + "}" if v.best_set else ""
    return f"{v.best_latent_dim}{within}"


def _paper_rows(ctx: Ctx) -> list[dict]:
    """The paper's Table 1 (image AUC, n = 3 runs per latent_dim) tested by the same
    capacity test, beside each stratum whose data set label matches."""
    if ctx.paper1 is None or not ctx.verdicts:
        return []
    ours = [v for v in ctx.verdicts if v.metric == "auc"]
    labels = {norm_label(v.dataset) for v in ours}
    table = ctx.paper1[ctx.paper1["_norm"].isin(labels)]
    if table.empty:
        return []
    paper = H.verdicts_from_summary(table.assign(n=PAPER_RUNS), alpha=ours[0].alpha)
    rows = []
    for p in paper:
        for v in ours:
            if norm_label(v.dataset) == norm_label(p.dataset):
                rows.append(
                    dict(
                        dataset=v.dataset,
                        paper=p.verdict,
                        paper_best=_best(p),
                        paper_p=f"p {H.format_p_clause(p.p_value)}",
                        model=v.model,
                        ours=v.verdict,
                        our_best=_best(v),
                        our_p="–"
                        if v.verdict == H.NOT_TESTED
                        else f"p {H.format_p_clause(v.p_value)}",
                    )  # fmt: skip
                )
    return rows


def p_text(t: H.CapacityTest) -> str:
    if not math.isfinite(t.p_value):
        return "–"
    text = f"p {H.format_p_clause(t.p_value)}"
    if t.p_adjusted != t.p_value:
        text += f" (Holm {H.format_p(t.p_adjusted)})"
    return text


def effect_text(t: H.CapacityTest) -> str:
    if not math.isfinite(t.effect):
        return "–"
    lo, hi = t.effect_ci
    ci = f" [{lo:+.3f}, {hi:+.3f}]" if math.isfinite(lo) else ""
    return f"{t.effect:+.3f}{ci}"


def _card(ctx: Ctx, v: H.StratumVerdict) -> dict:
    """The values of one stratum's line and card, as text (a ``not tested`` stratum
    shows no d* and no agreement with it)."""
    tested = v.verdict != H.NOT_TESTED
    return dict(
        dataset=v.dataset,
        model=v.model,
        colour=ctx.colours.get(v.dataset, "#444"),
        verdict=v.verdict,
        headline_p="–" if not tested else f"p {H.format_p_clause(v.p_value)}",
        best=v.best_latent_dim if tested else None,
        best_set=list(v.best_set or []),
        level=v.uncertainty.level,
        interval=v.level_text,
        glance_predictions=[
            f"{'intrinsic dim.' if 'intrinsic' in p.method else 'elbow'} "
            + (
                f"{p.predicted} ({H.format_ratio(p.ratio)})"
                if p.predicted and tested
                else (str(p.predicted) if p.predicted else "–")
            )
            for p in v.predictions
        ],
        headline=v.headline(),
        best_text=v.best_text(),
        subset=v.subset,
        uncertainty=_uncertainty_text(v),
        alpha=f"{v.alpha:g}",
        entropy_col=v.entropy_col,
        tests=[_test(v.over, "over capacity"), _test(v.under, "under capacity")],
        correlations=[
            _correlation(v.over_rho, "over capacity (d ≥ d*)"),
            _correlation(v.under_rho, "under capacity (d ≤ d*)"),
            _correlation(v.overall_rho, "all trials (mixes both branches)"),
        ],
        predictions=[
            dict(
                method=p.method,
                predicted=p.predicted or "–",
                observed=(v.best_latent_dim if tested else None) or "–",
                inside={True: "yes", False: "no", None: "–"}[p.inside],
                lost=f"{p.auc_lost:.3f}" if math.isfinite(p.auc_lost) else "–",
                reason=p.reason,
            )
            for p in v.predictions
        ],
    )


def _test(t: H.CapacityTest, label: str) -> dict:
    return dict(
        label=label,
        name=t.name,
        compared=f"{t.best_dim} vs {t.reference_dim}" if t.reference_dim is not None else "–",
        p=p_text(t),
        effect=effect_text(t),
        verdict=t.verdict,
        reason=t.reason,
    )


def _correlation(c: H.Correlation, label: str) -> dict:
    return dict(
        label=label,
        n=c.n,
        dims=", ".join(str(d) for d in c.latent_dims) or "–",
        rho="–" if not math.isfinite(c.rho) else f"{c.rho:+.2f}",
        ci="–" if not math.isfinite(c.ci_low) else f"{c.ci_low:+.2f} to {c.ci_high:+.2f}",
        reason=c.reason,
    )


def _uncertainty_text(v: H.StratumVerdict) -> str:
    u = v.uncertainty
    text = f"{v.n_trials} completed trials, {u.n_seeds} seed{'s' if u.n_seeds != 1 else ''}"
    if u.n_test_images:
        text += f", {u.n_test_images} test images"
    return f"{text}; uncertainty from {u.level}: {u.note}" if u.note else text


def _robustness(ctx: Ctx) -> dict | None:
    """The over-capacity Spearman rho for every entropy estimator (descriptive)."""
    cols = [c for c in ENTROPY_LABELS if has_values(ctx.done, c)]
    if len(cols) < 2:
        return None
    rows = []
    for v in ctx.verdicts[:MAX_PANELS]:
        g = ctx.done[ctx.done["_stratum"] == v.stratum]
        if v.best_latent_dim is None or v.verdict == H.NOT_TESTED or g.empty:
            continue
        over = g[g["latent_dim"] >= v.best_latent_dim]
        dims = over["latent_dim"].to_numpy(dtype=int)
        y = pd.to_numeric(over["auc"], errors="coerce").to_numpy(dtype=float)
        cells = []
        for c in cols:
            h = pd.to_numeric(over[c], errors="coerce").to_numpy(dtype=float)
            r = H.correlation(
                dims, h, y, branch="over-capacity", n_boot=300, seed=0, level=1 - v.alpha
            )
            rho = "–" if not math.isfinite(r.rho) else f"{r.rho:+.2f}"
            ci = "" if not math.isfinite(r.ci_low) else f" [{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
            cells.append((rho, ci))
        rows.append((v.stratum, cells))
    if not rows:
        return None
    n = len(ctx.verdicts)
    more = f"; the first {MAX_PANELS} of {n} strata" if n > MAX_PANELS else ""
    return dict(columns=cols, rows=rows, more=more)
