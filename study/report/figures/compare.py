"""The comparison page's figure: a metric against latent_dim per stratum, one curve per
run (mean ± sd over seeds), drawn with the report's grid, style and axes."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from study import hypothesis as H
from study.report.context import Ctx
from study.report.figures.curves import mean_sd_trace
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
from study.report.figures.style import (
    DATASET_COLOURS,
    LEGEND_BELOW,
    MARGIN_LEGEND_BELOW,
    MAX_PANELS,
    METRIC_LABELS,
)
from study.report.fragments import esc

CURVES_CAPTION = (
    "Mean ± std over seeds per latent_dim (lines, error bars), one colour per run; ★ marks "
    "a run's best latent dimension d* where its capacity test was carried out. One panel "
    "per stratum (data set / model); a stratum only one run holds gets a panel of its own."
)


def run_colour(i: int) -> str:
    """The colour of the ``i``-th run of a comparison."""
    return DATASET_COLOURS[i % len(DATASET_COLOURS)]


def strata(contexts: Sequence[Ctx]) -> list[str]:
    """Every stratum of the runs, in the order the runs give them."""
    keys: list[str] = []
    for ctx in contexts:
        keys += [v.stratum for v in ctx.verdicts]
        keys += [str(s) for s in ctx.done.get("_stratum", [])]
    return list(dict.fromkeys(keys))


def curves(labels: Sequence[str], contexts: Sequence[Ctx], metric: str = "auc") -> Plot:
    """``metric`` against latent_dim, one panel per stratum, one curve per run that holds
    the stratum. Raises :class:`NotAvailable` when no run has a completed trial."""
    keys = strata(contexts)
    if not keys:
        raise NotAvailable("Curves against latent_dim", "no run has a completed trial")
    shown = keys[:MAX_PANELS]
    holders = {k: [i for i, c in enumerate(contexts) if not c.agg(metric, k).empty] for k in shown}
    titles = [k if len(holders[k]) != 1 else f"{k} ({labels[holders[k][0]]} only)" for k in shown]
    nr, nc = grid_shape(len(shown))
    height = max(430, 360 * nr + 110)
    fig = Grid(nr, nc, titles=titles, hspace=0.07, vspace=vspace(height, nr))
    label = METRIC_LABELS.get(metric, metric)
    in_legend: set[int] = set()
    for p, key in enumerate(shown):
        r, c = divmod(p, nc)
        dims: set[int] = set()
        for i in holders[key]:
            a = contexts[i].agg(metric, key)
            dims |= {int(d) for d in a["latent_dim"]}
            at, who = (r + 1, c + 1), (labels[i], i)
            _curve(fig, at, who, a, i not in in_legend, label, key, is_searched(contexts[i]))
            _best(fig, at, who, contexts[i], key, label)
            in_legend.add(i)
        fig.x(r + 1, c + 1).update(log2_axis(_ticks(dims)))
        if c == 0:
            fig.y(r + 1, 1)["title"] = title(label)
    fig.hide_unused(len(shown))
    notes = [f"first {MAX_PANELS} of {len(keys)} strata shown"] if len(keys) > MAX_PANELS else []
    searched = [lab for lab, c in zip(labels, contexts) if is_searched(c)]
    if searched:
        notes.append(
            f"{', '.join(searched)}: searched by Optuna, drawn as points without lines: its "
            "trials differ in more than latent_dim (see its report's search section)"
        )
    return fig.plot(
        caption=CURVES_CAPTION,
        notes=notes,
        height=height,
        legend=LEGEND_BELOW,
        margin=MARGIN_LEGEND_BELOW,
        hovermode="closest",
        title=dict(text=f"{label} against latent dimension, run by run", x=0.01),
    )


def is_searched(ctx: Ctx) -> bool:
    """Whether the run's trials were chosen by Optuna (latent_dim varies with the rest)."""
    search = (ctx.run.space or {}).get("search")
    return isinstance(search, dict) and search.get("type") == "optuna"


def _ticks(dims: set[int]) -> list[int]:
    """The latent_dims as ticks, or the powers of two around them when some are not one
    (a search's latent_dims: 5, 27, 119 would crowd the axis)."""
    if all(d & (d - 1) == 0 for d in dims):
        return sorted(dims)
    lo, hi = min(dims).bit_length() - 1, (max(dims) - 1).bit_length()
    return [2**k for k in range(lo, hi + 1)]


def _curve(
    fig: Grid, at: tuple[int, int], run: tuple[str, int], a: pd.DataFrame, legend: bool,
    label: str, key: str, points: bool,
) -> None:  # fmt: skip
    """One run's mean ± sd curve (``run``: its label and index) in the panel ``at``."""
    (row, col), (run, i) = at, run
    head = f"<b>{esc(run)}</b> · {esc(key)}"
    mode = "markers" if points else "lines+markers"
    trace = mean_sd_trace(a, run, run_colour(i), i, label, head, mode)
    fig.add(trace | dict(showlegend=legend), row, col)


def _best(
    fig: Grid, at: tuple[int, int], run: tuple[str, int], ctx: Ctx, key: str, label: str
) -> None:
    """The run's d* in this stratum, when its capacity test was carried out."""
    (row, col), (run, i) = at, run
    v = next((v for v in ctx.verdicts if v.stratum == key), None)
    if v is None or v.best_latent_dim is None or v.verdict == H.NOT_TESTED:
        return
    fig.add(
        dict(
            type="scatter",
            x=[int(v.best_latent_dim)],
            y=arr([v.best_mean]),
            mode="markers",
            name=f"d* ({run})",
            legendgroup=run,
            showlegend=False,
            marker=dict(
                symbol="star", size=17, color=run_colour(i), line=dict(color="black", width=1)
            ),
            hovertemplate=f"<b>d* of {esc(run)}</b>: %{{x}}<br>{label} = %{{y:.3f}}<extra></extra>",
        ),
        row,
        col,
    )
