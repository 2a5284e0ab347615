"""The report's sections in page order; each module has ``ANCHOR``, ``TITLE`` and
``section(ctx, page) -> str`` (the section's HTML body), and may have
``shown(ctx) -> bool`` (False: the section is left off the page)."""

from __future__ import annotations

from study.report.sections import (
    detection,
    entropy,
    examples,
    facts,
    fixed_dim,
    known,
    methods,
    pixel,
    recon,
    search,
    verdicts,
)

SECTIONS = (
    verdicts,
    known,
    fixed_dim,
    detection,
    entropy,
    recon,
    pixel,
    methods,
    search,
    examples,
    facts,
)
