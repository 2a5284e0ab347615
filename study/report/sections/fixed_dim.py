"""Section "Entropy at fixed latent dimension": the paper's claim about entropy itself,
tested per data set x model x latent_dim on the knob the study designed to set it."""

from __future__ import annotations

import math

from study import hypothesis as H
from study.report.context import Ctx
from study.report.fragments import badge, esc, na
from study.report.page import Page

ANCHOR, TITLE = "fixed", "Entropy at fixed latent dimension"


def section(ctx: Ctx, page: Page) -> str:
    if not ctx.fixed:
        return na(TITLE, "no model whose entropy knob varies at a fixed latent_dim")
    level = H.format_level(1 - ctx.fixed[0].alpha)
    rows = "".join(_row(t) for t in ctx.fixed)
    return (
        "<p class='lead'>The paper's claim is about <b>entropy</b>, and every estimator "
        "rises with latent_dim, so the verdicts above cannot tell entropy from latent_dim. "
        "Here, per data set × model × latent_dim, the trials differ only in the knob the "
        "study designed to set the entropy (a VAE's kl_weight, a constrained AE's "
        "constraint_weight, MemAE's memory, weight_decay; the plain AE of the same "
        "architecture as level 0 where the study has it), from the least to the most "
        "regularised; models are never pooled. First a <b>manipulation check</b>: "
        f"<code>{esc(ctx.entropy_col)}</code> must fall with the knob (one-sided Spearman "
        "trend, permutation p ≤ α), else <b>not tested</b>. Then the claim: does lowering "
        "the entropy raise AUC at some level? A max-t of every level against the least "
        "regularised one (seed variances per level moderated, the best level re-chosen in "
        "every null draw), Holm across the rows. <b>supported</b>: adjusted p ≤ α; "
        "<b>contradicted</b>: the least regularised level beats every other "
        "(intersection-union); an AUC collapse at the strongest level is the "
        "under-capacity side the paper expects and is reported as such. Effects carry "
        f"{level} simultaneous intervals.</p>"
        "<div class='tablewrap'><table class='data'><thead><tr><th>data set / model</th>"
        "<th>latent_dim</th><th>knob: levels (trials)</th><th>mean entropy → AUC per level"
        "</th><th>entropy falls?</th><th>best level − weakest: AUC</th><th>p</th>"
        f"<th>verdict</th><th>why</th></tr></thead><tbody>{rows}</tbody></table>"
        "</div>"
    )


def _row(t: H.FixedDimTest) -> str:
    levels = "; ".join(f"{lv} ({n})" for lv, n in zip(t.levels, t.counts)) or "–"
    means = "; ".join(f"{h:.2f} → {a:.3f}" for h, a in zip(t.mean_entropy, t.mean_auc)) or "–"
    manip = "–"
    if math.isfinite(t.manipulation_p):
        manip = f"ρ = {t.manipulation_rho:+.2f}, p {H.format_p_clause(t.manipulation_p)}"
    effect = "–"
    if math.isfinite(t.effect) and t.verdict != H.NOT_TESTED:
        lo, hi = t.effect_ci
        ci = f" [{lo:+.3f}, {hi:+.3f}]" if math.isfinite(lo) else ""
        effect = f"{t.best_level}: {t.effect:+.3f}{ci}"
    p = "–"
    if math.isfinite(t.p_value) and t.verdict != H.NOT_TESTED:
        p = f"p {H.format_p_clause(t.p_value)}"
        if math.isfinite(t.p_adjusted) and t.p_adjusted != t.p_value:
            p += f" (Holm {H.format_p(t.p_adjusted)})"
    dim = "–" if t.latent_dim is None else str(t.latent_dim)
    return (
        f"<tr><td>{esc(t.dataset)} / {esc(t.model)}</td><td class='num'>{dim}</td>"
        f"<td>{esc(t.knob or '–')}: {esc(levels)}</td><td class='small'>{esc(means)}</td>"
        f"<td class='small'>{esc(manip)}</td><td class='num'>{esc(effect)}</td>"
        f"<td class='num'>{esc(p)}</td><td>{badge(t.verdict)}</td>"
        f"<td class='reason'>{esc(t.reason)}</td></tr>"
    )
