"""What every figure builder uses: a grid of subplots laid out by Plotly's ``make_subplots``
with traces kept as plain dicts, the :class:`Plot` a builder returns, and small helpers.

Plain trace dicts are measurably faster than ``plotly.graph_objects`` traces (no
validation; see docs/report.md, "Size and speed"), so builders fill dicts and the page
embeds them as they are. :func:`to_figure` turns a :class:`Plot` into a validated
``plotly.graph_objects.Figure`` on the same ``make_subplots`` grid, for notebooks and
for the tests' validation.
"""

from __future__ import annotations

import base64
import copy
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import get_colorscale
from plotly.subplots import make_subplots

from study.report.figures.style import TEMPLATE


class NotAvailable(LookupError):
    """A figure the run's tables cannot give: ``what`` is missing, ``why`` says why;
    ``notes`` are what the report prints instead of the "not available" line."""

    def __init__(self, what: str, why: str = "", notes: Sequence[str] = ()) -> None:
        super().__init__(f"{what}: not available" + (f" ({why})" if why else ""))
        self.what, self.why, self.notes = what, why, list(notes)


@dataclass
class Plot:
    """A figure as plain dicts (``data``, ``layout``), with the caption and notes the
    report prints beside it; ``grid`` holds the ``make_subplots`` arguments of its grid."""

    data: list[dict]
    layout: dict[str, Any]
    caption: str = ""
    notes: list[str] = field(default_factory=list)
    grid: dict[str, Any] | None = None


def to_figure(plot: Plot) -> go.Figure:
    """The plot as a validated ``plotly.graph_objects.Figure`` with the report's template
    (on its ``make_subplots`` grid, so ``add_trace(..., row=, col=)`` works). Raises
    ``ValueError`` naming any invalid property."""
    layout = copy.deepcopy(plot.layout)
    if plot.grid is None:
        fig = go.Figure(layout=layout)
    else:
        fig = make_subplots(**plot.grid)
        fig.update_layout(layout, overwrite=True)
    fig.add_traces(copy.deepcopy(plot.data))
    fig.update_layout(template=TEMPLATE)
    return fig


@functools.lru_cache(maxsize=64)
def _subplot_layout(rows: int, cols: int, hspace: float, vspace: float, widths: tuple | None):
    """``make_subplots``'s axis domains and title positions for a grid (cached: building
    the grid validates every axis, which costs 0.05-0.4 s)."""
    fig = make_subplots(
        rows=rows,
        cols=cols,
        horizontal_spacing=hspace,
        vertical_spacing=vspace,
        column_widths=list(widths) if widths else None,
        subplot_titles=["·"] * (rows * cols),
    )
    layout = fig.layout.to_plotly_json()
    layout.pop("template", None)
    return layout


class Grid:
    """A grid of subplots (``make_subplots``' layout) holding plain trace dicts.

    ``add(trace, row, col)`` places a trace dict; ``x(row, col)`` / ``y(row, col)`` are
    the axis layout dicts to fill; ``plot(**layout)`` gives the :class:`Plot`.
    """

    def __init__(
        self,
        rows: int = 1,
        cols: int = 1,
        *,
        titles: Sequence[str] = (),
        hspace: float = 0.08,
        vspace: float = 0.12,
        widths: Sequence[float] | None = None,
        title_size: int = 14,
    ) -> None:
        self.rows, self.cols = rows, cols
        self.data: list[dict] = []
        rel = tuple(float(w) for w in widths) if widths is not None else None
        base = copy.deepcopy(_subplot_layout(rows, cols, hspace, vspace, rel))
        placed = base.pop("annotations", [])
        self.layout: dict[str, Any] = base
        self.annotations = []
        for k, note in enumerate(placed):
            if k < len(titles) and titles[k]:
                note.update(text=titles[k], font=dict(size=title_size))
                self.annotations.append(note)
        self.grid = dict(
            rows=rows,
            cols=cols,
            horizontal_spacing=hspace,
            vertical_spacing=vspace,
            column_widths=list(rel) if rel else None,
        )

    def ref(self, row: int = 1, col: int = 1) -> tuple[str, str]:
        """The trace references (``"x2"``, ``"y2"``) of a subplot."""
        k = (row - 1) * self.cols + col
        return ("x", "y") if k == 1 else (f"x{k}", f"y{k}")

    def add(self, trace: dict, row: int = 1, col: int = 1) -> None:
        trace["xaxis"], trace["yaxis"] = self.ref(row, col)
        self.data.append(trace)

    def x(self, row: int = 1, col: int = 1) -> dict:
        return self.layout[axis_name("xaxis", (row - 1) * self.cols + col)]

    def y(self, row: int = 1, col: int = 1) -> dict:
        return self.layout[axis_name("yaxis", (row - 1) * self.cols + col)]

    def hide_unused(self, used: int) -> None:
        for k in range(used + 1, self.rows * self.cols + 1):
            self.layout[axis_name("xaxis", k)]["visible"] = False
            self.layout[axis_name("yaxis", k)]["visible"] = False

    def plot(self, caption: str = "", notes: Sequence[str] = (), **layout: Any) -> Plot:
        lay = {**self.layout, **layout}
        lay["annotations"] = [*self.annotations, *layout.get("annotations", [])]
        return Plot(self.data, lay, caption=caption, notes=list(notes), grid=self.grid)


def axis_name(kind: str, i: int) -> str:
    return kind if i == 1 else f"{kind}{i}"


def grid_shape(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return math.ceil(n / cols), cols


def vspace(height: float, rows: int, gap_px: float = 100, margins: float = 150) -> float:
    """The vertical spacing (a fraction of the plot area) that leaves ``gap_px`` between
    rows of subplots, room for an x-axis title and the next subplot's title."""
    if rows <= 1:
        return 0.1
    return min(0.3, gap_px / max(1.0, height - margins))


def log2_axis(dims: Sequence[int], title: str = "latent dimension d (log2)") -> dict:
    dims = sorted({int(d) for d in dims if d and d > 0})
    if len(dims) > 12:  # keep tick labels readable: powers of two only
        lo, hi = math.floor(math.log2(dims[0])), math.ceil(math.log2(dims[-1]))
        dims = [2**k for k in range(lo, hi + 1)]
    return dict(
        type="log",
        tickmode="array",
        tickvals=dims,
        ticktext=[str(d) for d in dims],
        title=dict(text=title),
    )


def colour_scale(name: str) -> list:
    """A named colour scale as an explicit list: plotly.js knows fewer names than Python,
    and some (Greys) run the other way there."""
    return get_colorscale(name)


def title(text: str) -> dict:
    return {"text": text}


def arr(values: Any, digits: int = 5) -> list:
    """Rounded floats with None for missing values (compact JSON)."""
    a = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    a = np.round(a, digits)
    return [None if not math.isfinite(v) else float(v) for v in a]


def typed(a: np.ndarray) -> dict:
    """A float32 array as plotly.js's typed-array spec (base64), compact in the page."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    return {
        "dtype": "f4",
        "bdata": base64.b64encode(a.tobytes()).decode("ascii"),
        "shape": ", ".join(str(n) for n in a.shape),
    }
