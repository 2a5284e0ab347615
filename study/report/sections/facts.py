"""Section 8: run facts: trials and compute, meta.json, sessions and the resolved space."""

from __future__ import annotations

import pandas as pd

from study.report.context import Ctx
from study.report.fragments import esc, kv_table, na, table_html
from study.report.page import Page
from study.report.values import finite, has_values, seconds
from study.results import disk_used_text

ANCHOR, TITLE = "facts", "8. Run facts"


def section(ctx: Ctx, page: Page) -> str:
    run = ctx.run
    parts = []
    if len(ctx.all_trials):
        parts.append("<h3>Trials and compute</h3>" + kv_table(_compute(ctx)))
    if run.meta:
        splits = run.meta.get("data_splits")
        if isinstance(splits, dict) and splits:
            parts.append("<h3>Data splits</h3>" + _splits_table(splits))
        meta = {k: v for k, v in run.meta.items() if k != "data_splits"}
        scalars = {k: v for k, v in meta.items() if not isinstance(v, (dict, list))}
        nested = {k: v for k, v in meta.items() if isinstance(v, dict)}
        parts.append("<h3>meta.json</h3>" + kv_table({**scalars, **nested}))
        sessions = run.meta.get("sessions")
        if isinstance(sessions, list) and sessions and all(isinstance(s, dict) for s in sessions):
            parts.append("<h3>Sessions</h3>" + table_html(pd.DataFrame(sessions[-20:])))
    else:
        parts.append(na("Run metadata", run.notes.get("meta", "")))
    if run.space_text:
        parts.append(f"<h3>Resolved search space (space.yaml)</h3><pre>{esc(run.space_text)}</pre>")
    else:
        parts.append(na("Resolved search space", run.notes.get("space", "")))
    return "\n".join(parts)


def _splits_table(splits: dict) -> str:
    """One row per data set: how its training, validation and test splits were made."""
    rows = [
        {"dataset": label, **{k: made.get(k, "") for k in ("train", "val", "test")}}
        for label, made in splits.items()
        if isinstance(made, dict)
    ]
    return table_html(pd.DataFrame(rows))


def _compute(ctx: Ctx) -> dict:
    """Trial counts by status, training and wall time, devices, hosts and disk use."""
    t = ctx.all_trials
    facts: dict = {"trials": len(t)}
    if "status" in t.columns:
        facts.update({f"trials {k}": int(n) for k, n in t["status"].value_counts().items()})
    for col, label in (("elapsed_s", "training time"), ("wall_s", "wall time")):
        if has_values(t, col):
            x = finite(t[col]).dropna()
            facts[f"total {label}"] = seconds(float(x.sum()))
            facts[f"{label} per trial (median / max)"] = (
                f"{seconds(float(x.median()))} / {seconds(float(x.max()))}"
            )
    for col in ("device", "hostname"):
        if col in t.columns and t[col].notna().any():
            vc = t[col].fillna("?").astype(str).value_counts()
            facts[f"{col}s"] = ", ".join(f"{k} ({n})" for k, n in vc.items())
    facts["disk used"] = disk_used_text(ctx.run.run_dir)  # models, checkpoints, tables
    return facts
