"""Section "Entropy at fixed latent dimension": the paper's claim about entropy itself,
tested among trials that share a latent_dim."""

from __future__ import annotations

import math

from study import hypothesis as H
from study.report.context import Ctx
from study.report.fragments import badge, esc, na
from study.report.page import Page

ANCHOR, TITLE = "fixed", "Entropy at fixed latent dimension"


def section(ctx: Ctx, page: Page) -> str:
    if not ctx.fixed:
        return na(TITLE, "no completed trials")
    rows = "".join(_row(t) for t in ctx.fixed)
    return (
        "<p class='lead'>The paper's claim is about <b>entropy</b>, and every estimator "
        "rises with latent_dim, so the verdicts above cannot tell entropy from latent_dim. "
        "Here only trials that <b>share a latent_dim</b> are compared (per data set), where "
        "entropy differs through what else sets it: a VAE's kl_weight, a constrained AE's "
        "constraint_weight, MemAE's memory, weight decay or the seed. Test: the pooled "
        "within-latent_dim Spearman ρ of "
        f"<code>{esc(ctx.entropy_col)}</code> and AUC, with a permutation null that "
        "permutes AUC within each latent_dim (two-sided, Holm across data sets). "
        "<b>supported</b>: lower entropy goes with higher AUC at p ≤ α; "
        "<b>contradicted</b>: higher entropy goes with higher AUC at p ≤ α.</p>"
        "<div class='tablewrap'><table class='data'><thead><tr><th>data set</th><th>n</th>"
        "<th>trials per latent_dim</th><th>entropy range</th><th>within-d ρ</th><th>p</th>"
        f"<th>verdict</th><th>why</th></tr></thead><tbody>{rows}</tbody></table>"
        "</div>"
    )


def _row(t: H.FixedDimTest) -> str:
    groups = ", ".join(f"d={d}: {n}" for d, n in t.groups.items()) or "–"
    rho = f"{t.rho:+.2f}" if math.isfinite(t.rho) else "–"
    p = "–" if not math.isfinite(t.p_value) else f"p {H.format_p_clause(t.p_value)}"
    if math.isfinite(t.p_adjusted) and t.p_adjusted != t.p_value:
        p += f" (Holm {H.format_p(t.p_adjusted)})"
    lo, hi = t.entropy_range
    span = f"{lo:.2f} to {hi:.2f}" if math.isfinite(lo) else "–"
    return (
        f"<tr><td>{esc(t.dataset)}</td><td class='num'>{t.n}</td><td>{groups}</td>"
        f"<td class='num'>{span}</td><td class='num'>{rho}</td><td class='num'>{esc(p)}</td>"
        f"<td>{badge(t.verdict)}</td><td class='reason'>{esc(t.reason)}</td></tr>"
    )
