"""Section 3: reconstruction error by split against latent_dim (the paper's Figure 3)."""

from __future__ import annotations

from study.report import figures
from study.report.context import Ctx
from study.report.fragments import na
from study.report.page import Page

ANCHOR, TITLE = "recon", "3. Reconstruction error vs latent dimension"


def section(ctx: Ctx, page: Page) -> str:
    try:
        return page.figure(figures.build(ctx, "recon_error_vs_latent_dim"))
    except figures.NotAvailable as exc:
        return na(exc.what, exc.why)
