"""Section "Known answer": on data sets whose normal images have a known dimension (the
phantom with a finite ``texture_rank``, column ``known_dim``), what the study found
beside it: d* with the set within reach, the label-free predictions, and across data
sets the rank correlation of each with the known dimension. On the page only when the
trials carry ``known_dim`` (:func:`shown`)."""

from __future__ import annotations

import math

from study.report import figures
from study.report.context import Ctx
from study.report.figures.known import KNOWN, KnownRow, known_rows, rank_correlation
from study.report.fragments import badge, esc, na
from study.report.page import Page
from study.report.values import has_values

ANCHOR, TITLE = "known", "Known answer"


def shown(ctx: Ctx) -> bool:
    """Whether the section is on the page: some completed trial carries ``known_dim``."""
    return has_values(ctx.done, KNOWN)


def section(ctx: Ctx, page: Page) -> str:
    rows = known_rows(ctx)
    if not rows:
        return na(TITLE, "no stratum has both a verdict and a known dimension")
    lead = (
        "<p class='lead'>These data sets know the answer: their normal images lie, up to "
        "pixel noise, on a manifold of the <b>known dimension</b> (column "
        f"<code>{KNOWN}</code>; docs/phantom.md). If the paper's account holds, d* (the "
        "latent_dim of the best mean AUC; beside it the latent_dims within reach of it "
        f"at α = {ctx.verdicts[0].alpha:g}) sits near the known dimension and AUC falls "
        "beyond it, and the label-free predictions (the elbow of the normal validation "
        "reconstruction error, the intrinsic dimension of the training images) track it "
        "too. Ratios to the known dimension in brackets. The rank correlations run across "
        "data sets, per model; they describe, they do not test.</p>"
    )
    out = lead + _table(rows) + _correlations(rows)
    try:
        out += page.figure(figures.build(ctx, "known_answer"))
    except figures.NotAvailable as exc:
        out += na(exc.what, exc.why)
    return out


def _num(x: float | int | None, digits: int = 0) -> str:
    if x is None or not math.isfinite(float(x)):
        return "–"
    return f"{float(x):.{digits}f}"


def _ratio(x: float | int | None, known: float) -> str:
    if x is None or not math.isfinite(float(x)) or known <= 0:
        return ""
    return f" <span class='muted'>({float(x) / known:.2f}×)</span>"


def _table(rows: list[KnownRow]) -> str:
    body = []
    for r in rows:
        reach = ", ".join(str(d) for d in r.best_set) or "–"
        body.append(
            f"<tr><td>{esc(r.stratum)}</td><td class='num'>{_num(r.known_dim)}</td>"
            f"<td class='num'>{_num(r.best)}{_ratio(r.best, r.known_dim)}</td>"
            f"<td>{esc(reach)}</td><td>{badge(r.verdict)}</td>"
            f"<td class='num'>{_num(r.elbow)}{_ratio(r.elbow, r.known_dim)}</td>"
            f"<td class='num'>{_num(r.twonn, 1)}{_ratio(r.twonn, r.known_dim)}</td>"
            f"<td class='num'>{_num(r.mle, 1)}{_ratio(r.mle, r.known_dim)}</td>"
            f"<td class='num'>{_num(r.intrinsic_prediction)}</td></tr>"
        )
    return (
        "<div class='tablewrap'><table class='data'><thead><tr><th>stratum</th>"
        "<th>known dimension</th><th>d* (best mean AUC)</th><th>within reach of d*</th>"
        "<th>over-capacity verdict</th><th>elbow of the normal validation error</th>"
        "<th>image intrinsic dim. (TwoNN)</th><th>image intrinsic dim. (MLE)</th>"
        "<th>latent_dim from TwoNN</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _correlations(rows: list[KnownRow]) -> str:
    """Per model, the rank correlation with the known dimension across its data sets."""
    items = []
    for model in dict.fromkeys(r.model for r in rows):
        mine = [r for r in rows if r.model == model]
        known = [r.known_dim for r in mine]
        cells = []
        for found in (
            [r.best for r in mine],
            [r.elbow for r in mine],
            [r.twonn for r in mine],
            [r.mle for r in mine],
        ):
            rho, n, why = rank_correlation(known, found)
            text = f"ρ = {rho:+.2f} (n = {n})" if math.isfinite(rho) else f"– ({why})"
            cells.append(f"<td class='num'>{esc(text)}</td>")
        items.append(f"<tr><td>{esc(model)}</td>{''.join(cells)}</tr>")
    return (
        "<p>Spearman rank correlation with the known dimension, across data sets:</p>"
        "<div class='tablewrap'><table class='data'><thead><tr><th>model</th>"
        "<th>d*</th><th>elbow</th><th>TwoNN</th><th>MLE</th></tr></thead>"
        f"<tbody>{''.join(items)}</tbody></table></div>"
    )
