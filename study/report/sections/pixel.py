"""Section 4: pixel AP and best Dice against latent_dim, for data sets with masks."""

from __future__ import annotations

from study.report import figures
from study.report.context import Ctx
from study.report.fragments import na
from study.report.page import Page

ANCHOR, TITLE = "pixel", "4. Pixel-level segmentation vs latent dimension"


def section(ctx: Ctx, page: Page) -> str:
    try:
        return page.figure(figures.build(ctx, "pixel_metrics_vs_latent_dim"))
    except figures.NotAvailable as exc:
        return na(exc.what, exc.why)
