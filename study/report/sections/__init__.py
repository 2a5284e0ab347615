"""The report's sections in page order; each module has ``ANCHOR``, ``TITLE`` and
``section(ctx, page) -> str`` (the section's HTML body)."""

from __future__ import annotations

from study.report.sections import (
    detection,
    entropy,
    examples,
    facts,
    fixed_dim,
    methods,
    pixel,
    recon,
    search,
    verdicts,
)

SECTIONS = (verdicts, fixed_dim, detection, entropy, recon, pixel, methods, search, examples, facts)
