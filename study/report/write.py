"""Rendering and writing a report, and the verdict lines the command line prints."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from study import hypothesis as H
from study.report.context import Ctx, Options, build_context, planned_strata
from study.report.fragments import esc, note
from study.report.load import RunData, read_run
from study.report.page import Page
from study.report.sections import SECTIONS
from study.results import atomic_write_text

REPORT_FILE = "report.html"
VERDICTS_FILE = "verdicts.csv"
SECTION_FAILED = "This section could not be drawn"


def render_report(run: RunData, **options: Any) -> tuple[str, int]:
    """The report's HTML and its number of figures. ``options`` are those of
    :class:`~study.report.context.Options`, and ``validate=True`` checks every figure
    against Plotly's schema and lets a failing section raise (slower; for tests)."""
    validate = options.pop("validate", False)
    doc, n_figures, _ = render(run, Options(**options), validate=validate)
    return doc, n_figures


def render(
    run: RunData, options: Options, validate: bool = False, ctx: Ctx | None = None
) -> tuple[str, int, Ctx]:
    """The report's HTML, its number of figures and its context (verdicts, tests); a
    section that fails becomes a note saying so, unless ``validate``."""
    page = Page(validate=validate)
    ctx = ctx or build_context(run, options)
    for module in SECTIONS:
        if not getattr(module, "shown", lambda _: True)(ctx):
            continue
        n_figures = page.n_figures
        try:
            body = module.section(ctx, page)
        except Exception as exc:  # noqa: BLE001 - one odd table must not cost the whole report
            if validate:
                raise
            page.n_figures = n_figures  # its figures are not on the page
            body = note(f"{SECTION_FAILED}: {esc(type(exc).__name__)}: {esc(exc)}")
        page.add(module.ANCHOR, module.TITLE, body)
    n_strata = len(planned_strata(run, ctx.all_trials))
    doc = page.render(run, len(ctx.done), len(ctx.all_trials), n_strata)
    return doc, page.n_figures, ctx


def write_report(
    run_dir: Path | str,
    *,
    entropy_col: str = "latent_entropy_gaussian",
    max_curves: int = 240,
    n_boot: int = 2000,
    n_sim: int = 10000,
    alpha: float = 0.05,
) -> Path:
    """Write ``run_dir/report.html`` and ``run_dir/verdicts.csv`` (atomically) from the
    run's tables; returns the report's path.

    ``entropy_col`` picks the latent statistic the descriptions and the fixed-latent_dim
    test use; ``alpha`` the level of the verdicts; ``max_curves`` bounds the learning
    curves drawn (a fixed random subset of the trials beyond it).
    Raises ``FileNotFoundError`` when ``run_dir`` is not a folder, ``ValueError`` for an
    unknown ``entropy_col`` or an ``alpha`` outside (0, 1); missing optional tables only
    turn their sections into "not available" notes.
    """
    options = Options(entropy_col, max_curves, n_boot, n_sim, alpha).check()
    run = read_run(run_dir)
    doc, _, ctx = render(run, options)
    out = run.run_dir / REPORT_FILE
    atomic_write_text(out, doc)
    table = H.verdicts_table(ctx.verdicts, ctx.fixed, alpha)
    atomic_write_text(run.run_dir / VERDICTS_FILE, table.to_csv(index=False))
    return out


def verdict_lines(run_dir: Path | str) -> list[str]:
    """The headline verdict of every stratum as one line each, from ``verdicts.csv``
    (written with the report), e.g. ``verdict phantom/ae: supported (over-capacity drop:
    studentised max-t vs the largest latent_dim, p = 0.002; AUC d=8 minus d=128: +0.031
    [+0.012, +0.050])``. Empty when the run has no verdicts table."""
    path = Path(run_dir) / VERDICTS_FILE
    if not path.is_file():
        return []
    table = pd.read_csv(path)
    lines = []
    for _, r in table[table["branch"] == "fixed latent_dim"].iterrows():
        p = "" if pd.isna(r["p_value"]) else f", p {H.format_p_clause(float(r['p_value']))}"
        rho = "" if pd.isna(r["effect"]) else f", rho = {float(r['effect']):+.2f}"
        lines.append(
            f"entropy at fixed latent_dim, {r['dataset']}: {r['verdict']} ({r['test']}{rho}"
            f"{p}, n = {int(r['n_trials'])}; {r['reason']})"
        )
    for _, r in table[table["branch"] == "over-capacity"].iterrows():
        lines.append(_over_capacity_line(r))
    return lines


def _over_capacity_line(r: pd.Series) -> str:
    if r["verdict"] == H.NOT_TESTED:
        return f"verdict {r['stratum']}: not tested ({r['reason']})"
    p = f"p {H.format_p_clause(float(r['p_value']))}"
    if float(r["p_adjusted"]) != float(r["p_value"]):
        p += f", Holm-adjusted {H.format_p(float(r['p_adjusted']))}"
    effect = ""
    if math.isfinite(float(r["effect_ci_low"])):
        effect = (
            f"; AUC d={int(r['best_latent_dim'])} minus d={int(r['reference_latent_dim'])}: "
            f"{float(r['effect']):+.3f} [{float(r['effect_ci_low']):+.3f}, "
            f"{float(r['effect_ci_high']):+.3f}]"
        )
    return (
        f"verdict {r['stratum']}: {r['verdict']} ({r['test']}, {p}, alpha "
        f"{float(r['alpha']):g}{effect})"
    )
