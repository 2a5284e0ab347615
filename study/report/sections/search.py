"""Section 6: search diagnostics: what the Optuna search found per stratum (the best
completed configuration, the parameter importances), its history, the objective against
latent_dim, trials by status, the trials stopped early, diverged or errored, and
learning curves."""

from __future__ import annotations

import pandas as pd

from study.report import figures
from study.report.context import Ctx
from study.report.figures.search import search_summary
from study.report.fragments import esc, na, note, table_html
from study.report.page import Page
from study.report.searched import MIN_IMPORTANCE_TRIALS, objective
from study.report.values import fmt

ANCHOR, TITLE = "search", "6. Search diagnostics"
MAX_STOPPED_ROWS = 50
STOPPED_COLUMNS = (
    "trial_id",
    "stratum",
    "latent_dim",
    "seed",
    "status",
    "epochs_done",
    "best_auc",
    "error",
)


def section(ctx: Ctx, page: Page) -> str:
    parts = []
    if ctx.run.optuna_db is not None:
        parts += _optuna(ctx, page)
    else:
        parts.append(
            na(
                "Optuna optimisation history and parameter importances",
                "no optuna.db: a grid search",
            )
        )
    parts += _status_tables(ctx)
    try:
        parts.append(page.figure(figures.build(ctx, "learning_curves")))
    except figures.NotAvailable as exc:
        parts.append(na(exc.what, exc.why))
    return "\n".join(parts)


def _optuna(ctx: Ctx, page: Page) -> list[str]:
    """What the search found, the history figure with its notes, and the objective
    against latent_dim."""
    parts = [_found(ctx)]
    try:
        plot = figures.build(ctx, "optuna_history")
        parts, notes = [*parts, page.figure(plot)], plot.notes
    except figures.NotAvailable as exc:
        notes = exc.notes
    parts += [note(esc(n)) for n in notes]
    heading = "<h3 id='latent-dependence'>Partial dependence of the objective on latent_dim</h3>"
    try:
        plot = figures.build(ctx, "objective_vs_latent_dim")
    except figures.NotAvailable as exc:
        return [*parts, heading + na(exc.what, exc.why)]
    more = "".join(note(esc(n)) for n in plot.notes)
    return [*parts, heading + page.figure(plot) + more]


def _found(ctx: Ctx) -> str:
    """Per stratum: the best completed configuration with its objective and test AUC,
    and the parameter importances."""
    found = search_summary(ctx)
    if not found:
        return ""
    metric, _ = objective(ctx.run)
    rows = []
    for f in found:
        b, imp = f.best, f.importance
        c = f.counts
        row = {
            "stratum": f.stratum,
            "trials: completed / stopped / failed": (
                f"{c['completed']} / {c['stopped']} / {c['failed']}"
            ),
            "best completed trial": "–" if b is None else f"{b.number} ({b.trial_id or '–'})",
            f"{metric} (objective)": "–" if b is None else fmt(b.value),
            "test AUC": "–" if b is None else fmt(b.test_auc),
            "configuration": "–" if b is None else b.config_text(),
            "parameter importance": imp.text(),
        }
        rows.append(row)
    on = "validation" if metric.startswith("val_") else "test"
    return (
        "<h3 id='search-found'>What the search found</h3>"
        + note(
            f"The best completed trial of each stratum by the objective <code>{esc(metric)}"
            f"</code> (measured on the {on} set), with the test AUC of the same trial; the "
            "importance of each searched parameter for the objective over the completed "
            f"trials ({MIN_IMPORTANCE_TRIALS} at least; with fewer, over every trial at the "
            f"latest epoch that {MIN_IMPORTANCE_TRIALS} or more reached, on the objective "
            "there, as the row says)."
        )
        + table_html(pd.DataFrame(rows))
    )


def _status_tables(ctx: Ctx) -> list[str]:
    t = ctx.all_trials
    if "status" not in t.columns or not len(t):
        return []
    counts = pd.crosstab(t["_stratum"], t["status"]).reset_index()
    counts = counts.rename(columns={"_stratum": "stratum"})
    parts = ["<h3>Trials by status</h3>" + table_html(counts)]
    stopped = t[t["status"].isin(["early-stopped", "diverged", "errored"])]
    if not len(stopped):
        return [*parts, note("No trial was stopped early, diverged or errored.")]
    shown = stopped[[c for c in STOPPED_COLUMNS if c in stopped.columns]]
    shown = shown.head(MAX_STOPPED_ROWS).copy()
    if "error" in shown.columns:
        shown["error"] = shown["error"].map(
            lambda e: "" if e is None or pd.isna(e) else str(e)[:160]
        )
    n = len(stopped)
    more = f" (first {MAX_STOPPED_ROWS} of {n})" if n > MAX_STOPPED_ROWS else ""
    return [*parts, f"<h3>Trials stopped early, diverged or errored{more}</h3>" + table_html(shown)]
