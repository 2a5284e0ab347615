"""Section 2: a latent statistic against AUC, coloured by latent_dim."""

from __future__ import annotations

from study.report import figures
from study.report.context import Ctx
from study.report.fragments import na
from study.report.page import Page

ANCHOR, TITLE = "entropy", "2. Latent entropy vs AUC"


def section(ctx: Ctx, page: Page) -> str:
    try:
        return page.figure(figures.build(ctx, "entropy_vs_auc"))
    except figures.NotAvailable as exc:
        return na(exc.what, exc.why)
