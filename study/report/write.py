"""Rendering and writing a report, and the verdict lines the command line prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from study import hypothesis as H
from study.report.context import Ctx, Options, build_context, planned_strata
from study.report.fragments import esc, note
from study.report.load import RunData, read_run
from study.report.page import Page
from study.report.searched import search_lines
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
    others = [v for v in ctx.by_metric if v.metric != "auc"]  # AUC: the headline family
    table = H.verdicts_table([*ctx.verdicts, *others], ctx.fixed, alpha)
    atomic_write_text(run.run_dir / VERDICTS_FILE, table.to_csv(index=False))
    return out


def verdict_lines(run_dir: Path | str) -> list[str]:
    """The headline verdict of every stratum as one line each, from ``verdicts.csv``
    (written with the report), e.g. ``verdict phantom/ae: supported (inverted U: over- and
    under-capacity drops (intersection-union: the larger adjusted p), p = 0.002, alpha
    0.05; d* = 8; over capacity supported: AUC d=8 minus d=128 +0.031 [+0.012, +0.050];
    under capacity supported: AUC d=8 minus d=1 +0.120 [+0.090, +0.150])``; a ``not
    tested`` stratum gives its reason and no d*; then for a searched run one line per
    stratum saying what the search found (:func:`study.report.searched.search_lines`).
    Empty when the run has no verdicts table."""
    path = Path(run_dir) / VERDICTS_FILE
    if not path.is_file():
        return []
    table = pd.read_csv(path)
    lines = []
    for _, r in table[table["branch"] == "fixed latent_dim"].iterrows():
        lines.append(_fixed_line(r))
    auc = table[table["metric"].astype(str) == "auc"]
    branches = {(r["stratum"], r["branch"]): r for _, r in auc.iterrows()}
    headline = (table["branch"] == "inverted U") & (table["metric"].astype(str) == "auc")
    for _, r in table[headline].iterrows():
        over = branches.get((r["stratum"], "over-capacity"))
        under = branches.get((r["stratum"], "under-capacity"))
        lines.append(_headline_line(r, over, under))
    return lines + search_lines(run_dir)


def _fixed_line(r: pd.Series) -> str:
    where = f"{r['dataset']}/{r['model']}"
    if not pd.isna(r.get("latent_dim")):
        where += f", latent_dim {int(r['latent_dim'])}"
    if r["verdict"] == H.NOT_TESTED or pd.isna(r["p_value"]):
        return f"entropy at fixed latent_dim, {where}: {r['verdict']} ({r['reason']})"
    ci = ""
    if not pd.isna(r.get("effect_ci_low")):
        ci = f" [{float(r['effect_ci_low']):+.3f}, {float(r['effect_ci_high']):+.3f}]"
    return (
        f"entropy at fixed latent_dim, {where}: {r['verdict']} ({r['knob']}; {r['test']}: "
        f"{r['best_level']} minus the weakest level, AUC {float(r['effect']):+.3f}{ci}, p "
        f"{H.format_p_clause(float(r['p_value']))}, n = {int(r['n_trials'])}; {r['reason']})"
    )


def _branch_text(r: pd.Series | None, label: str) -> str:
    if r is None:
        return ""
    text = f"; {label} {r['verdict']}"
    if not pd.isna(r["effect_ci_low"]):
        text += (
            f": AUC d={int(r['best_latent_dim'])} minus d={int(r['reference_latent_dim'])} "
            f"{float(r['effect']):+.3f} [{float(r['effect_ci_low']):+.3f}, "
            f"{float(r['effect_ci_high']):+.3f}]"
        )
    return text


def _headline_line(r: pd.Series, over: pd.Series | None, under: pd.Series | None) -> str:
    if r["verdict"] == H.NOT_TESTED:
        return f"verdict {r['stratum']}: not tested ({r['reason']})"
    p = f"p {H.format_p_clause(float(r['p_adjusted']))}"
    return (
        f"verdict {r['stratum']}: {r['verdict']} ({r['test']}, {p}, alpha "
        f"{float(r['alpha']):g}; d* = {int(r['best_latent_dim'])}"
        f"{_branch_text(over, 'over capacity')}{_branch_text(under, 'under capacity')})"
    )
