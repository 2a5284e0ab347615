"""The Optuna search of a run (optuna.db): the optimisation history and the parameter
importances per study, and the objective against latent_dim with a partial dependence.
The numbers come from :mod:`study.report.searched`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from study.report import searched
from study.report.context import Ctx
from study.report.figures.grid import (
    Grid,
    NotAvailable,
    Plot,
    arr,
    grid_shape,
    log2_axis,
    title,
    vspace,
)
from study.report.figures.style import LEGEND_BELOW, MARGIN_LEGEND_BELOW
from study.report.searched import LATENT_PARAM, objective, trial_points
from study.report.values import fmt

MIN_PD_TRIALS = 5  # completed trials a partial-dependence estimate needs (and 3 latent_dims)
HISTORY_TITLE = "Optuna optimisation history and parameter importances"
POINT_STYLE = {
    "completed": ("completed", dict(color="#0072B2", size=7, symbol="circle")),
    "stopped": (
        "early-stopped (value at its last evaluation)",
        dict(color="#E69F00", size=7, symbol="circle-open", line=dict(width=2)),
    ),
    "failed": (
        "failed or stopped without a value (drawn at the bottom)",
        dict(color="#999999", size=8, symbol="x-thin-open", line=dict(width=2)),
    ),
}
HISTORY_CAPTION = (
    "From optuna.db: every trial of each study. Completed trials at their final value; "
    "early-stopped (pruned) ones at the value of the evaluation they were stopped on, "
    "which is earlier in training and not comparable with a final value; the best "
    "completed value so far; the importance of each searched parameter for the objective "
    "over the completed trials (the evaluator and the trials in the panel's title; "
    f"{searched.MIN_IMPORTANCE_TRIALS} completed trials at least, else every trial at the "
    f"latest epoch that {searched.MIN_IMPORTANCE_TRIALS} or more reached)."
)
DEPENDENCE_CAPTION = (
    "Every trial of each Optuna study against its latent_dim, as in Optuna's slice "
    "plot: completed trials at their final value, early-stopped ones at the value "
    "they were stopped on (earlier in training). The line is a partial dependence: "
    "a random forest fitted to the completed trials' searched parameters, predicted "
    "for each latent_dim with the other parameters at their observed values and "
    "averaged. Where lr or widths vary together with latent_dim this describes the "
    "search; it does not isolate latent_dim as a grid over it does."
)


def load_studies(ctx: Ctx) -> tuple[list[tuple[str, Any]], list[str]]:
    """(name, optuna.Study) of every study in optuna.db (the first MAX_PANELS by name),
    and notes on what could not be read. Cached in ``ctx``."""
    if "optuna_studies" not in ctx.cache:
        ctx.cache["optuna_studies"] = searched.load_studies(ctx.run)
    return ctx.cache["optuna_studies"]


def search_summary(ctx: Ctx) -> list[searched.StratumSearch]:
    """What the search found per stratum (best completed trial, importances). Cached."""
    if "optuna_found" not in ctx.cache:
        studies, _ = load_studies(ctx)
        ctx.cache["optuna_found"] = searched.search_summary(ctx.run, studies)
    return ctx.cache["optuna_found"]


def history(ctx: Ctx) -> Plot:
    """Per Optuna study: every trial's value against its number with the best completed
    value so far, and the importance of each searched parameter. The plot's notes count
    the trials of each study (or say why a study is missing)."""
    if ctx.run.optuna_db is None:
        raise NotAvailable(HISTORY_TITLE, "no optuna.db: a grid search")
    try:
        import optuna.importance  # noqa: F401 - the importances need it
    except ImportError as exc:
        why = "optuna is not installed"
        raise NotAvailable(HISTORY_TITLE, why, notes=[why]) from exc
    studies, notes = load_studies(ctx)
    notes = list(notes)
    if not studies:
        notes = notes or ["optuna.db holds no study"]
        raise NotAvailable(HISTORY_TITLE, "; ".join(notes), notes=notes)
    _, label = objective(ctx.run)
    found = search_summary(ctx)
    titles = [
        t
        for (n, _), f in zip(studies, found)
        for t in (
            f"{n}: optimisation history",
            f"importance ({f.importance.evaluator}, {_used(f.importance)})",
        )
    ]
    height = 300 * len(studies) + 130
    fig = Grid(
        len(studies), 2, titles=titles, widths=[0.62, 0.38], hspace=0.16,
        vspace=vspace(height, len(studies)),
    )  # fmt: skip
    shown_legend: set[str] = set()
    for i, ((name, study), f) in enumerate(zip(studies, found), start=1):
        points = trial_points(study)
        if not points:
            notes.append(f"study {name!r} has no trial")
            continue
        _history_panel(fig, i, study, points, shown_legend)
        notes.append(_count_note(name, points))
        fig.x(i, 1)["title"] = title("trial number")
        fig.y(i, 1)["title"] = title(f"objective ({label})")
        _importance_panel(fig, i, f.importance, notes)
    return fig.plot(
        caption=HISTORY_CAPTION,
        notes=notes,
        height=height,
        legend=LEGEND_BELOW,
        margin=MARGIN_LEGEND_BELOW,
        title=dict(text="Optuna search per stratum", x=0.01),
    )


def _count_note(name: str, points: list[dict]) -> str:
    counts = {k: sum(p["kind"] == k for p in points) for k in ("completed", "stopped")}
    failed = sum(p["kind"] == "failed" for p in points)
    return (
        f"{name}: {len(points)} trials: {counts['completed']} completed, "
        f"{counts['stopped']} early-stopped"
        + (f", {failed} failed or without a value" if failed else "")
    )


def _point_text(p: dict, kind: str, number_first: bool = False) -> str:
    lines = [f"trial {p['number']}"] if number_first else []
    params = [f"{k}: {fmt(v, 4)}" for k, v in p["params"].items()]
    if kind == "stopped":
        lines.append(f"early-stopped at epoch {p['epoch']}")
    elif kind == "failed":
        lines.append("failed (no value)")
    return "<br>".join([*lines, *params])


def _history_panel(
    fig: Grid, i: int, study: Any, points: list[dict], shown_legend: set[str]
) -> None:
    values = [p["value"] for p in points if p["value"] is not None]
    floor = min(values) if values else 0.0
    for kind, (legend, marker) in POINT_STYLE.items():
        group = [p for p in points if p["kind"] == kind]
        if not group:
            continue
        fig.add(
            dict(
                type="scatter",
                x=[p["number"] for p in group],
                y=arr([floor if p["value"] is None else p["value"] for p in group]),
                mode="markers",
                name=legend,
                marker=marker,
                showlegend=kind not in shown_legend,
                legendgroup=kind,
                text=[_point_text(p, kind) for p in group],
                hovertemplate="trial %{x}: %{y:.4f}<br>%{text}<extra></extra>"
                if kind != "failed"
                else "trial %{x}<br>%{text}<extra></extra>",
            ),
            i,
            1,
        )
        shown_legend.add(kind)
    done = [p for p in points if p["kind"] == "completed"]
    if not done:
        return
    y = [float(p["value"]) for p in done]
    maximize = study.direction.name == "MAXIMIZE"
    run_best = list(np.maximum.accumulate(y) if maximize else np.minimum.accumulate(y))
    x = [p["number"] for p in done]
    last = max(p["number"] for p in points)
    if last > x[-1]:  # the best so far holds until the last trial
        x, run_best = [*x, last], [*run_best, run_best[-1]]
    fig.add(
        dict(
            type="scatter",
            x=x,
            y=arr(run_best),
            mode="lines",
            name="best completed so far",
            line=dict(color="#D55E00", width=2, shape="hv"),
            showlegend="best" not in shown_legend,
            legendgroup="best",
        ),
        i,
        1,
    )
    shown_legend.add("best")


def _importance_panel(fig: Grid, i: int, imp: searched.Importance, notes: list[str]) -> None:
    """The importances as horizontal bars, or the reason they are not available (in the
    panel and in the notes)."""
    if not imp.available:
        notes.append(f"{imp.study}: parameter importance: {imp.text()}")
        # in paper coordinates: plotly.js places nothing on an axis without traces
        xd, yd = fig.x(i, 2)["domain"], fig.y(i, 2)["domain"]
        fig.annotations.append(
            dict(
                text=f"not available:<br>{imp.reason}",
                xref="paper",
                yref="paper",
                x=(xd[0] + xd[1]) / 2,
                y=(yd[0] + yd[1]) / 2,
                showarrow=False,
                font=dict(color="#667085", size=12),
            )
        )
        fig.x(i, 2)["visible"] = False
        fig.y(i, 2)["visible"] = False
        return
    keys = list(imp.importances)[::-1]
    fig.add(
        dict(
            type="bar",
            x=arr([imp.importances[k] for k in keys], 4),
            y=keys,
            orientation="h",
            marker=dict(color="#009E73"),
            showlegend=False,
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        ),
        i,
        2,
    )
    fig.x(i, 2)["title"] = title(f"importance ({imp.evaluator})")
    fig.y(i, 2)["automargin"] = True


def partial_dependence(points: list[dict], grid: Sequence[float]) -> list[float] | None:
    """Partial dependence of the objective on latent_dim: a random forest fitted to the
    searched parameters of ``points`` (completed trials), predicted with latent_dim set
    to each ``grid`` value and every other parameter at its observed values, averaged.
    None when there are too few trials."""
    names = sorted({k for p in points for k in p["params"]})
    rows = [p for p in points if all(k in p["params"] for k in names)]
    dims = {float(p["params"][LATENT_PARAM]) for p in rows}
    if len(rows) < MIN_PD_TRIALS or len(dims) < 3:
        return None
    from sklearn.ensemble import RandomForestRegressor

    columns = []
    for name in names:
        raw = [p["params"][name] for p in rows]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
            columns.append([float(v) for v in raw])
        else:  # a categorical choice: its index among the values seen
            levels = {v: i for i, v in enumerate(dict.fromkeys(map(str, raw)))}
            columns.append([float(levels[str(v)]) for v in raw])
    x = np.asarray(columns, dtype=float).T
    y = np.asarray([float(p["value"]) for p in rows])
    model = RandomForestRegressor(n_estimators=200, random_state=0).fit(x, y)
    j = names.index(LATENT_PARAM)
    out = []
    for g in grid:
        xg = x.copy()
        xg[:, j] = g
        out.append(float(model.predict(xg).mean()))
    return out


def latent_dependence(ctx: Ctx) -> Plot:
    """Searched studies: the objective against latent_dim per stratum, every trial (as
    Optuna's slice plot), with a partial-dependence estimate from the completed trials."""
    if ctx.run.optuna_db is None:
        raise NotAvailable("A slice over latent_dim", "no optuna.db: a grid search")
    studies, _ = load_studies(ctx)
    panels = []
    for name, study in studies:
        points = [
            p
            for p in trial_points(study)
            if p["kind"] in ("completed", "stopped") and LATENT_PARAM in p["params"]
        ]
        if points:
            panels.append((searched.stratum_of(name, study), points))
    if not panels:
        raise NotAvailable("A slice over latent_dim", "latent_dim is not searched by Optuna")
    _, label = objective(ctx.run)
    nr, nc = grid_shape(len(panels))
    height = max(400, 330 * nr + 130)
    fig = Grid(nr, nc, titles=[k for k, _ in panels], hspace=0.07, vspace=vspace(height, nr))
    notes: list[str] = []
    shown_legend: set[str] = set()
    for i, (key, points) in enumerate(panels):
        r, c = divmod(i, nc)
        _dependence_panel(fig, r + 1, c + 1, key, points, shown_legend, notes)
        if c == 0:
            fig.y(r + 1, 1)["title"] = title(label)
    fig.hide_unused(len(panels))
    return fig.plot(
        caption=DEPENDENCE_CAPTION,
        notes=notes,
        height=height,
        legend=LEGEND_BELOW,
        margin=MARGIN_LEGEND_BELOW,
        title=dict(text=f"{label} against latent_dim in the search, per stratum", x=0.01),
    )


def _dependence_panel(
    fig: Grid,
    row: int,
    col: int,
    key: str,
    points: list[dict],
    shown_legend: set[str],
    notes: list[str],
) -> None:
    for kind in ("completed", "stopped"):
        group = [p for p in points if p["kind"] == kind]
        if not group:
            continue
        legend, marker = POINT_STYLE[kind]
        fig.add(
            dict(
                type="scatter",
                x=[p["params"][LATENT_PARAM] for p in group],
                y=arr([p["value"] for p in group]),
                mode="markers",
                name=legend,
                marker=marker,
                legendgroup=kind,
                showlegend=kind not in shown_legend,
                text=[_point_text(p, kind, number_first=True) for p in group],
                hovertemplate="latent_dim %{x}: %{y:.4f}<br>%{text}<extra></extra>",
            ),
            row,
            col,
        )
        shown_legend.add(kind)
    dims = sorted(float(p["params"][LATENT_PARAM]) for p in points)
    lo, hi = dims[0], dims[-1]
    done = [p for p in points if p["kind"] == "completed"]
    grid = sorted({lo, hi, *np.geomspace(max(lo, 1e-9), max(hi, 1e-9), 40).tolist()})
    curve = partial_dependence(done, grid) if hi > lo else None
    if curve is not None:
        fig.add(
            dict(
                type="scatter",
                x=arr(grid, 3),
                y=arr(curve),
                mode="lines",
                name="partial dependence (completed trials)",
                line=dict(color="#D55E00", width=2.5),
                legendgroup="pd",
                showlegend="pd" not in shown_legend,
                hovertemplate="latent_dim %{x:.0f}: %{y:.4f}<extra>partial dependence</extra>",
            ),
            row,
            col,
        )
        shown_legend.add("pd")
    else:
        notes.append(
            f"{key}: {len(done)} completed trial(s) over "
            f"{len({p['params'][LATENT_PARAM] for p in done})} latent_dim value(s): no "
            f"partial-dependence estimate (it needs {MIN_PD_TRIALS} completed trials over "
            "3 or more values)"
        )
    k0, k1 = math.floor(math.log2(max(lo, 1))), math.ceil(math.log2(max(hi, 1)))
    fig.x(row, col).update(log2_axis([2**k for k in range(k0, k1 + 1)], "latent_dim"))


def _used(imp: Any) -> str:
    """Which trials an importance panel rests on, for its title."""
    if imp.epoch is None:
        return f"{imp.n_completed} completed"
    return f"{imp.n_used} trials at epoch {imp.epoch}"
