"""The report's look: colours, line styles, the Plotly template and the labels of axes."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.colors import qualitative

from ae4ad.metrics import METRICS, get_metric
from ae4ad.metrics import names as metric_names
from study.results import MODEL_PARAM_ORDER

ENTROPY_LABELS: dict[str, str] = {
    name: get_metric(name).axis_title for name in metric_names("latent")
}
"""Axis titles of the latent statistics (the ``latent`` group of :mod:`ae4ad.metrics`)."""
METRIC_LABELS: dict[str, str] = {name: m.label for name, m in METRICS.items()}
"""The label of every registered metric, for tables, titles and hover boxes."""
SCORE_UNITS = {"l2": "mean squared error", "l1": "mean absolute error", "ssim": "1 − SSIM"}
RECON_SPLITS = (
    ("recon_error_train_normal", "train, normal", "#1f77b4", "solid"),
    ("recon_error_val_normal", "validation, normal", "#17becf", "dot"),
    ("recon_error_test_normal", "test, normal", "#2ca02c", "solid"),
    ("recon_error_test_abnormal", "test, abnormal", "#d62728", "solid"),
)
DATASET_COLOURS = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#332288",
    "#882255",
    *qualitative.Dark24,
)
MODEL_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
MODEL_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "x", "star-square")
HOVER_KEYS = (
    "trial_id",
    "stratum",
    "seed",
    *MODEL_PARAM_ORDER,
    "lr",
    "batch_size",
    "epochs",
    "weight_decay",
    "score",
    "epochs_done",
    "status",
)
PLOT_CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"scale": 2}}
TEMPLATE = go.layout.Template(
    layout=dict(
        font=dict(family="Inter, 'Helvetica Neue', Arial, sans-serif", size=13, color="#222"),
        paper_bgcolor="white",
        plot_bgcolor="white",
        colorway=list(DATASET_COLOURS[:8]),
        xaxis=dict(showgrid=True, gridcolor="#e6e6e6", zeroline=False, linecolor="#888", ticks=""),
        yaxis=dict(showgrid=True, gridcolor="#e6e6e6", zeroline=False, linecolor="#888", ticks=""),
        hoverlabel=dict(font=dict(size=12)),
        legend=dict(bgcolor="rgba(255,255,255,0.8)"),
        margin=dict(l=70, r=30, t=60, b=60),
    )
)
TEMPLATE_JSON = TEMPLATE.to_plotly_json()
# a horizontal legend in the bottom margin, below the x-axis titles
LEGEND_BELOW = dict(orientation="h", x=0, y=0.01, yanchor="bottom", yref="container")
MARGIN_LEGEND_BELOW = dict(l=70, r=30, t=60, b=115)
MAX_EXAMPLE_STRATA = 6
MAX_PANELS = 12  # strata drawn in one grid of subplots (and in the estimator table)
