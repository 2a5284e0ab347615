"""Section 7: example reconstructions and anomaly-score distributions."""

from __future__ import annotations

from study.report import figures
from study.report.context import Ctx
from study.report.figures.examples import shown_strata
from study.report.fragments import esc, na, note
from study.report.page import Page

ANCHOR, TITLE = "examples", "7. Examples"


def section(ctx: Ctx, page: Page) -> str:
    parts = []
    shown = shown_strata(ctx)
    if ctx.run.examples is None:
        parts.append(na("Example reconstructions", ctx.run.notes.get("examples", "")))
    else:
        for v in shown:
            plot = figures.build(ctx, figures.EXAMPLES + v.stratum)
            if plot is not None:
                parts.append(page.figure(plot))
        if not any(parts):
            parts.append(na("Example reconstructions", "no examples for completed trials"))
        elif len(ctx.verdicts) > len(shown):
            names = ", ".join(v.stratum for v in shown)
            parts.append(
                note(f"Examples of {len(shown)} of {len(ctx.verdicts)} strata ({esc(names)}).")
            )
    try:
        plot = figures.build(ctx, "score_distributions")
        if plot is not None:
            parts.append(page.figure(plot))
    except figures.NotAvailable as exc:
        parts.append(na(exc.what, exc.why))
    return "\n".join(p for p in parts if p)
