"""Section 6: search diagnostics: the Optuna search, trials by status, the trials stopped
early, diverged or errored, and learning curves."""

from __future__ import annotations

import pandas as pd

from study.report import figures
from study.report.context import Ctx
from study.report.fragments import esc, na, note, table_html
from study.report.page import Page

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
    """The history figure with its notes, and the objective against latent_dim."""
    try:
        plot = figures.build(ctx, "optuna_history")
        parts, notes = [page.figure(plot)], plot.notes
    except figures.NotAvailable as exc:
        parts, notes = [""], exc.notes
    parts += [note(esc(n)) for n in notes]
    heading = "<h3 id='latent-dependence'>Partial dependence of the objective on latent_dim</h3>"
    try:
        plot = figures.build(ctx, "objective_vs_latent_dim")
    except figures.NotAvailable as exc:
        return [*parts, heading + na(exc.what, exc.why)]
    more = "".join(note(esc(n)) for n in plot.notes)
    return [*parts, heading + page.figure(plot) + more]


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
