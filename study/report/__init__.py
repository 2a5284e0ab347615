"""The interactive report of a study run: one self-contained HTML file that works offline.

``write_report(run_dir)`` reads the result tables of ``runs/<study name>/`` (trials.parquet,
and when present history.parquet, scores.parquet, examples.json, space.yaml, meta.json,
optuna.db) and writes ``run_dir/report.html`` atomically. plotly.js is embedded once in the
page head; every figure is a Plotly div. Missing optional tables turn their section into a
"not available" note, never an error; a running or interrupted study, or a trial without a
finished status, puts a "partial results" banner at the top.

What the report shows (see docs/report.md): the hypothesis verdicts per data set and model
(:mod:`study.hypothesis`), AUC/AP against latent_dim with the paper's Table 1 numbers beside
matching data sets, latent entropy against AUC, reconstruction errors (the paper's Figure 3),
pixel metrics, a methods comparison in the paper's Table 2 format, search diagnostics,
example reconstructions and the run's facts.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> run = make_synthetic_run(Path(tempfile.mkdtemp()) / "demo", datasets=("toy",),
    ...                          latent_dims=(2, 4, 8, 16), seeds=(0, 1))
    >>> html = write_report(run).read_text(encoding="utf-8")
    >>> "Verdicts" in html and html.count("plotly.js v") == 1
    True

Command line: ``python -m study.report RUN_DIR`` (re)writes the report of a run;
``python -m study.report --demo DIR`` writes a synthetic run there first.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import html
import json
import math
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import yaml
from plotly.colors import get_colorscale, qualitative, sample_colorscale
from plotly.offline import get_plotlyjs

from study import hypothesis as H
from study.results import MODEL_PARAM_ORDER, disk_used_text

__all__ = [
    "REPORT_FILE",
    "ENTROPY_LABELS",
    "RunData",
    "load_run",
    "make_synthetic_run",
    "render_report",
    "write_report",
]

REPORT_FILE = "report.html"
VERDICTS_FILE = "verdicts.csv"
FINISHED_STATUSES = ("completed", "errored", "early-stopped", "diverged")
REFERENCE_DIR = Path(__file__).resolve().parents[1] / "reference"

ENTROPY_LABELS: dict[str, str] = {
    "latent_entropy_gaussian": "Gaussian latent entropy (nats, scale-free)",
    "latent_entropy_knn": "k-NN latent entropy (nats, scale-free)",
    "latent_effective_rank": "effective rank of the latents (dimensions)",
    "latent_participation_ratio": "participation ratio of the latents (dimensions)",
    "latent_intrinsic_dim": "intrinsic dimension of the latents (dimensions)",
}
METRIC_LABELS = {
    "auc": "AUC",
    "ap": "AP",
    "pixel_ap": "pixel AP",
    "best_dice": "best Dice",
    "pixel_auc": "pixel AUC",
}
SCORE_UNITS = {"l2": "mean squared error", "l1": "mean absolute error", "ssim": "1 − SSIM"}
RECON_SPLITS = (
    ("recon_error_train_normal", "train, normal", "#1f77b4", "solid"),
    ("recon_error_val_normal", "validation, normal", "#17becf", "dot"),
    ("recon_error_test_normal", "test, normal", "#2ca02c", "solid"),
    ("recon_error_test_abnormal", "test, abnormal", "#d62728", "solid"),
)
STATUS_COLOURS = {
    "completed": "#2ca02c",
    "early-stopped": "#ff7f0e",
    "diverged": "#9467bd",
    "errored": "#d62728",
}
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
_TEMPLATE_JSON = TEMPLATE.to_plotly_json()
NOT_AVAILABLE = "not available"
SECTION_FAILED = "This section could not be drawn"
# a horizontal legend in the bottom margin, below the x-axis titles
LEGEND_BELOW = dict(orientation="h", x=0, y=0.01, yanchor="bottom", yref="container")
MARGIN_LEGEND_BELOW = dict(l=70, r=30, t=60, b=115)
MAX_EXAMPLE_STRATA = 6
MAX_PANELS = 12  # strata drawn in one grid of subplots (and in the estimator table)
SUMMARY_COLUMNS = (
    "auc",
    "ap",
    "pixel_ap",
    "best_dice",
    "recon_error_train_normal",
    "recon_error_val_normal",
    "recon_error_test_normal",
    "recon_error_test_abnormal",
)


# ----------------------------------------------------------------------------- loading


@dataclass
class RunData:
    """Everything a report is drawn from; a missing table is None and noted in ``notes``."""

    run_dir: Path
    name: str
    trials: pd.DataFrame | None = None
    history: pd.DataFrame | None = None
    scores: pd.DataFrame | None = None
    examples: _Examples | None = None
    space: dict | None = None
    space_text: str | None = None
    meta: dict | None = None
    optuna_db: Path | None = None
    notes: dict[str, str] = field(default_factory=dict)


def _read_table(path: Path, notes: dict[str, str], key: str) -> pd.DataFrame | None:
    if not path.is_file():
        notes[key] = f"{path.name} is missing"
        return None
    try:
        if path.suffix == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - a broken optional table is reported, not raised
        notes[key] = f"{path.name} could not be read ({type(exc).__name__}: {exc})"
        return None


def load_run(run_dir: Path | str) -> RunData:
    """Read the result tables of ``run_dir``; optional ones may be missing.

    Raises ``FileNotFoundError`` when ``run_dir`` is not a folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"{run_dir}: no such run folder (expected <storage_path>/<study name>/ holding "
            "trials.parquet)"
        )
    notes: dict[str, str] = {}
    run = RunData(run_dir=run_dir, name=run_dir.name, notes=notes)
    trials_path = run_dir / "trials.parquet"
    if not trials_path.is_file() and (run_dir / "trials.csv").is_file():
        trials_path = run_dir / "trials.csv"
    run.trials = _read_table(trials_path, notes, "trials")
    run.history = _read_table(run_dir / "history.parquet", notes, "history")
    run.scores = _read_table(run_dir / "scores.parquet", notes, "scores")
    ex_path = run_dir / "examples.json"
    if ex_path.is_file():
        try:
            text = ex_path.read_text(encoding="utf-8")
            if len(text) <= 5_000_000:  # small enough to check it all
                json.loads(text)
            run.examples = _Examples(text)
            if not len(run.examples) and text.strip() != "{}":
                raise ValueError("no trial entries found")
        except (OSError, ValueError) as exc:
            run.examples = None
            notes["examples"] = f"examples.json could not be read ({exc})"
    else:
        notes["examples"] = "examples.json is missing"
    sp_path = run_dir / "space.yaml"
    if sp_path.is_file():
        try:
            run.space_text = sp_path.read_text(encoding="utf-8")
            loaded = yaml.safe_load(run.space_text)
            run.space = loaded if isinstance(loaded, dict) else None
        except (OSError, yaml.YAMLError) as exc:
            notes["space"] = f"space.yaml could not be read ({exc})"
    else:
        notes["space"] = "space.yaml is missing"
    meta_path = run_dir / "meta.json"
    if meta_path.is_file():
        try:
            loaded = json.loads(meta_path.read_text(encoding="utf-8"))
            run.meta = loaded if isinstance(loaded, dict) else None
        except (OSError, ValueError) as exc:
            notes["meta"] = f"meta.json could not be read ({exc})"
    else:
        notes["meta"] = "meta.json is missing"
    if (run_dir / "optuna.db").is_file():
        run.optuna_db = run_dir / "optuna.db"
    if run.space and isinstance(run.space.get("name"), str):
        run.name = run.space["name"]
    elif run.trials is not None and "study" in run.trials.columns and len(run.trials):
        run.name = str(run.trials["study"].iloc[0])
    return run


def _paper_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    t1 = pd.read_csv(REFERENCE_DIR / "paper_table1_latent_dim.csv", comment="#")
    t2 = pd.read_csv(REFERENCE_DIR / "paper_table2_methods.csv", comment="#")
    return t1, t2


def _norm_label(label: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(label).lower())


# ----------------------------------------------------------------------------- helpers


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}" if math.isfinite(value) else "–"
    return str(value)


def _finite(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce").replace([np.inf, -np.inf], np.nan)


def _has_values(df: pd.DataFrame | None, col: str) -> bool:
    return df is not None and col in df.columns and _finite(df[col]).notna().any()


def _log2_axis(dims: Sequence[int], title: str = "latent dimension d (log2)") -> dict:
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


def _stratum_series(df: pd.DataFrame) -> pd.Series:
    if "stratum" in df.columns and df["stratum"].notna().all():
        return df["stratum"].astype(str)
    return df["dataset"].astype(str) + "/" + df["model"].astype(str)


def _planned_strata(run: RunData, trials: pd.DataFrame) -> list[str]:
    """The strata of the study: every data set x model of its plan (space.yaml), then
    any other stratum the trials table holds (e.g. of an edited space), whether or not
    any of their trials completed."""
    space = run.space or {}
    datasets, models = space.get("datasets"), space.get("models")
    keys: list[str] = []
    if isinstance(datasets, list) and isinstance(models, list):
        for ds in datasets:
            for m in models:
                if isinstance(ds, dict) and isinstance(m, dict):
                    keys.append(
                        f"{ds.get('label') or ds.get('name')}/{m.get('label') or m.get('name')}"
                    )
    if "_stratum" in trials.columns:
        keys += [str(k) for k in trials["_stratum"].dropna()]
    return list(dict.fromkeys(keys))


def _hover_text(df: pd.DataFrame) -> pd.Series:
    """'key: value' lines of the trial's config for hover boxes."""
    parts = []
    if df.empty:
        return pd.Series([], index=df.index, dtype=object)
    for key in HOVER_KEYS:
        if key in df.columns:
            col = df[key]
            if key in ("lr", "weight_decay"):
                s = col.map(lambda v: "" if pd.isna(v) else f"{v:.2g}").astype(str)
            else:
                s = col.astype(str)
            parts.append(f"{key}: " + s)
    if not parts:
        return pd.Series([""] * len(df), index=df.index)
    out = parts[0]
    for p in parts[1:]:
        out = out + "<br>" + p
    return out


def _subsample(df: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    return df if len(df) <= n else df.sample(n=n, random_state=seed).sort_index()


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return math.ceil(n / cols), cols


def _axis_name(kind: str, i: int) -> str:
    return kind if i == 1 else f"{kind}{i}"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- page


class _Fig:
    """A Plotly figure as a plain dict on a grid of subplots (no validation: fast).

    ``add(trace, row, col)`` places a trace dict; ``x(row, col)`` / ``y(row, col)`` are the
    axis layout dicts to fill; ``to_dict(**layout)`` gives ``{"data", "layout"}``.
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
        self.layout: dict[str, Any] = {}
        self.annotations: list[dict] = []
        rel = np.asarray(widths if widths is not None else [1.0] * cols, dtype=float)
        rel = rel / rel.sum()
        avail_w = 1 - hspace * (cols - 1)
        h = (1 - vspace * (rows - 1)) / rows
        for r in range(rows):
            x0 = 0.0
            for c in range(cols):
                w = avail_w * rel[c]
                k = r * cols + c + 1
                y1 = 1 - r * (h + vspace)
                self.layout[_axis_name("xaxis", k)] = {
                    "domain": [x0, min(1.0, x0 + w)],
                    "anchor": f"y{k}",
                }
                self.layout[_axis_name("yaxis", k)] = {
                    "domain": [max(0.0, y1 - h), y1],
                    "anchor": f"x{k}",
                }
                if k - 1 < len(titles) and titles[k - 1]:
                    self.annotations.append(
                        dict(
                            text=titles[k - 1],
                            x=x0 + w / 2,
                            y=y1,
                            xref="paper",
                            yref="paper",
                            xanchor="center",
                            yanchor="bottom",
                            showarrow=False,
                            font=dict(size=title_size),
                        )
                    )
                x0 += w + hspace

    def _k(self, row: int, col: int) -> int:
        return (row - 1) * self.cols + col

    def add(self, trace: dict, row: int = 1, col: int = 1) -> None:
        k = self._k(row, col)
        trace["xaxis"] = "x" if k == 1 else f"x{k}"
        trace["yaxis"] = "y" if k == 1 else f"y{k}"
        self.data.append(trace)

    def x(self, row: int = 1, col: int = 1) -> dict:
        return self.layout[_axis_name("xaxis", self._k(row, col))]

    def y(self, row: int = 1, col: int = 1) -> dict:
        return self.layout[_axis_name("yaxis", self._k(row, col))]

    def hide_unused(self, used: int) -> None:
        for k in range(used + 1, self.rows * self.cols + 1):
            self.layout[_axis_name("xaxis", k)]["visible"] = False
            self.layout[_axis_name("yaxis", k)]["visible"] = False

    def to_dict(self, **layout: Any) -> dict:
        lay = {**self.layout, **layout}
        lay["annotations"] = [*self.annotations, *layout.get("annotations", [])]
        return {"data": self.data, "layout": lay}


def _vspace(height: float, rows: int, gap_px: float = 100, margins: float = 150) -> float:
    """The vertical spacing (a fraction of the plot area) that leaves ``gap_px`` between
    rows of subplots, room for an x-axis title and the next subplot's title."""
    if rows <= 1:
        return 0.1
    return min(0.3, gap_px / max(1.0, height - margins))


def _scale(name: str) -> list:
    """A named colour scale as an explicit list: plotly.js knows fewer names than Python,
    and some (Greys) run the other way there."""
    return get_colorscale(name)


def _title(text: str) -> dict:
    return {"text": text}


def _arr(values: Any, digits: int = 5) -> list:
    """Rounded floats with None for missing values (compact JSON)."""
    a = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    a = np.round(a, digits)
    return [None if not math.isfinite(v) else float(v) for v in a]


class _Examples:
    """examples.json, decoded one trial at a time.

    The file maps trial ids to small dicts of nested lists; it grows with the number of
    trials (hundreds of MB for a large study), so only the trials shown are decoded.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._cache: dict[str, dict | None] = {}
        # top-level entries are "<trial id>":{...}; inside them no value is an object, so
        # every '":{' (or '": {') closes a top-level key
        self._pos: dict[str, int] = {}
        for sep in ('":{', '": {'):
            pos = text.find(sep)
            while pos != -1:
                start = text.rfind('"', 0, pos)
                self._pos[text[start + 1 : pos]] = pos + len(sep) - 1
                pos = text.find(sep, pos + len(sep))

    def __contains__(self, trial_id: object) -> bool:
        return str(trial_id) in self._pos

    def __len__(self) -> int:
        return len(self._pos)

    def get(self, trial_id: str) -> dict | None:
        trial_id = str(trial_id)
        if trial_id not in self._cache:
            obj = None
            if trial_id in self._pos:
                try:
                    obj, _ = json.JSONDecoder().raw_decode(self._text, self._pos[trial_id])
                except ValueError:
                    obj = None
            self._cache[trial_id] = obj if isinstance(obj, dict) else None
        return self._cache[trial_id]


class _Page:
    """Collects sections and figures; every figure becomes one Plotly div."""

    def __init__(self, validate: bool = False) -> None:
        self.sections: list[tuple[str, str, str]] = []  # (anchor, title, body html)
        self.n_figures = 0
        self.validate = validate

    def figure(self, fig: go.Figure | dict, caption: str = "") -> str:
        """The figure's div; ``fig`` may be a plain dict (``data``, ``layout``) built
        without validation for speed."""
        self.n_figures += 1
        if isinstance(fig, dict):
            if self.validate:  # raises ValueError naming any invalid property
                go.Figure(fig)
            fig = {"data": fig.get("data", []), "layout": dict(fig.get("layout", {}))}
            fig["layout"]["template"] = _TEMPLATE_JSON
        else:
            fig.update_layout(template=TEMPLATE)
        div = pio.to_html(
            fig,
            full_html=False,
            include_plotlyjs=False,
            div_id=f"figure-{self.n_figures}",
            config=PLOT_CONFIG,
            default_width="100%",
            validate=False,
        )
        cap = f"<figcaption>{caption}</figcaption>" if caption else ""
        return f'<figure class="fig">{div}{cap}</figure>'

    def add(self, anchor: str, title: str, body: str) -> None:
        self.sections.append((anchor, title, body))


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def _na(what: str, why: str = "") -> str:
    extra = f" ({_esc(why)})" if why else ""
    return _note(f"{_esc(what)}: {NOT_AVAILABLE}{extra}.")


def _table_html(df: pd.DataFrame, cls: str = "data", escape: bool = True) -> str:
    head = "".join(f"<th>{_esc(c) if escape else c}</th>" for c in df.columns)
    rows = []
    for _, r in df.iterrows():
        cells = "".join(f"<td>{_esc(_fmt(v)) if escape else v}</td>" for v in r.tolist())
        rows.append(f"<tr>{cells}</tr>")
    return (
        f'<div class="tablewrap"><table class="{cls}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


# ----------------------------------------------------------------------------- the report


@dataclass
class _Ctx:
    run: RunData
    done: pd.DataFrame  # completed trials with a latent_dim
    all_trials: pd.DataFrame
    verdicts: list[H.StratumVerdict]
    colours: dict[str, str]
    model_index: dict[str, int]
    entropy_col: str
    max_curves: int
    page: _Page
    summary: dict[str, pd.DataFrame] = field(default_factory=dict)
    hover: pd.Series = field(default_factory=lambda: pd.Series(dtype=str))
    cache: dict = field(default_factory=dict)
    fixed: list[H.FixedDimTest] = field(default_factory=list)


def _partial_reasons(run: RunData) -> list[str]:
    reasons = []
    status = (run.meta or {}).get("status")
    if status in ("running", "interrupted"):
        reasons.append(f"the study's status is “{_esc(status)}” (meta.json)")
    t = run.trials
    if t is not None and "status" in t.columns:
        unfinished = int((~t["status"].isin(FINISHED_STATUSES)).sum())
        if unfinished:
            reasons.append(f"{unfinished} of {len(t)} trials have not finished")
    return reasons


def _verdict_badge(verdict: str) -> str:
    css = verdict.replace(" ", "-")
    return f'<span class="badge {css}">{_esc(verdict)}</span>'


def _p_text(t: H.CapacityTest) -> str:
    if not math.isfinite(t.p_value):
        return "–"
    text = f"p {H.format_p_clause(t.p_value)}"
    if t.p_adjusted != t.p_value:
        text += f" (Holm {H.format_p(t.p_adjusted)})"
    return text


def _effect_text(t: H.CapacityTest) -> str:
    if not math.isfinite(t.effect):
        return "–"
    lo, hi = t.effect_ci
    ci = f" [{lo:+.3f}, {hi:+.3f}]" if math.isfinite(lo) else ""
    return f"{t.effect:+.3f}{ci}"


def _test_row(t: H.CapacityTest, v: H.StratumVerdict, label: str) -> str:
    compared = f"{t.best_dim} vs {t.reference_dim}" if t.reference_dim is not None else "–"
    return (
        f"<tr><td>{label}</td><td>{_esc(t.name)}</td><td>{compared}</td>"
        f"<td class='num'>{_p_text(t)}</td><td class='num'>{_effect_text(t)}</td>"
        f"<td>{_verdict_badge(t.verdict)}</td><td class='reason'>{_esc(t.reason)}</td></tr>"
    )


def _rho_row(c: H.Correlation, label: str) -> str:
    rho = "–" if not math.isfinite(c.rho) else f"{c.rho:+.2f}"
    ci = "–" if not math.isfinite(c.ci_low) else f"{c.ci_low:+.2f} to {c.ci_high:+.2f}"
    dims = ", ".join(str(d) for d in c.latent_dims) or "–"
    return (
        f"<tr><td>{label}</td><td class='num'>{c.n}</td><td>{dims}</td>"
        f"<td class='num'>{rho}</td><td class='num'>{ci}</td>"
        f"<td class='reason'>{_esc(c.reason)}</td></tr>"
    )


def _prediction_rows(v: H.StratumVerdict) -> str:
    rows = []
    for p in v.predictions:
        inside = {True: "yes", False: "no", None: "–"}[p.inside]
        lost = f"{p.auc_lost:.3f}" if math.isfinite(p.auc_lost) else "–"
        rows.append(
            f"<tr><td>{_esc(p.method)}</td><td>{p.predicted or '–'}</td>"
            f"<td>{v.best_latent_dim or '–'}</td><td>{inside}</td><td class='num'>{lost}</td>"
            f"<td class='reason'>{_esc(p.reason)}</td></tr>"
        )
    return "".join(rows)


def _uncertainty_text(v: H.StratumVerdict) -> str:
    u = v.uncertainty
    text = f"{v.n_trials} completed trials, {u.n_seeds} seed{'s' if u.n_seeds != 1 else ''}"
    if u.n_test_images:
        text += f", {u.n_test_images} test images"
    return f"{text}; uncertainty from {u.level}: {u.note}" if u.note else text


def _hypothesis_tests(
    run: RunData, trials: pd.DataFrame, entropy_col: str, alpha: float, n_boot: int, n_sim: int
) -> tuple[list[H.StratumVerdict], list[H.FixedDimTest]]:
    """The verdicts (every stratum of the trials table, with the test-image level where
    scores.parquet has the per-image scores) and the fixed-latent_dim tests."""
    needed = {"latent_dim", "auc", "dataset", "model"}
    if trials.empty or not needed <= set(trials.columns):
        return [], []
    lat = pd.to_numeric(trials["latent_dim"], errors="coerce")
    trials = trials[lat > 0]
    if trials.empty:
        return [], []
    verdict_list = H.verdicts(
        trials, run.scores, alpha, entropy_col=entropy_col, n_sim=n_sim, n_boot=n_boot
    )
    fixed = H.fixed_latent_dim_tests(trials, alpha, entropy_col=entropy_col, n_perm=n_sim)
    return verdict_list, fixed


def _section_verdicts(ctx: _Ctx) -> None:
    if not ctx.verdicts:
        why = ctx.run.notes.get("trials", "no trial with a latent_dim and an AUC")
        ctx.page.add("verdicts", "Verdicts", _na("Hypothesis tests", why))
        return
    alpha = ctx.verdicts[0].alpha
    parts = [
        "<p class='lead'>Hypothesis (Cai et al., MICCAI 2024): beyond the best latent "
        "dimension d*, extra latent entropy lets the autoencoder reconstruct anomalies too, "
        "so <b>AUC drops from d* to the largest latent_dim</b>; below d*, too little "
        "entropy hurts too. <b>Test</b>: a studentised max-t of the mean AUC at d* against "
        "the largest (over capacity) or the smallest (under capacity) latent_dim; its null "
        "distribution is simulated under a flat curve with d* chosen again in every draw, "
        "so choosing d* from the same trials costs nothing. "
        f"<b>supported</b>: Holm-adjusted p ≤ α = {alpha:g} (across the "
        f"{len(ctx.verdicts)} strata); <b>contradicted</b>: AUC keeps rising (the largest "
        "latent_dim beats every other); <b>not shown</b>: neither; <b>not tested</b>: the "
        "data cannot answer (the reason says why). The effect is the AUC difference with "
        "its 95 % simultaneous interval. Measured calibration: docs/report.md.</p>",
        _glance_table(ctx),
    ]
    if len(ctx.verdicts) > 4:
        parts.append("<p class='note'>Click a stratum below for its details.</p>")
    for v in ctx.verdicts:
        colour = ctx.colours.get(v.dataset, "#444")
        opened = " open" if len(ctx.verdicts) <= 4 else ""
        subset = f"<p class='note'>{_esc(v.subset)}.</p>" if v.subset else ""
        parts.append(
            f"""<details class="card" style="border-left-color:{colour}"{opened}>
<summary><h3>{_esc(v.dataset)} <span class="muted">/ {_esc(v.model)}</span>
{_verdict_badge(v.verdict)}</h3></summary>
<p class="headline">{_esc(v.headline())}.</p>
<p class="best">{_esc(v.best_text())}.</p>{subset}
<p class="small">{_esc(_uncertainty_text(v))}.</p>
<div class="tablewrap"><table class="data verdict">
<thead><tr><th>branch</th><th>test</th><th>d* vs d</th><th>p (α = {v.alpha:g})</th>
<th>AUC effect [95 % CI]</th><th>verdict</th><th>why</th></tr></thead><tbody>
{_test_row(v.over, v, "over capacity")}
{_test_row(v.under, v, "under capacity")}
</tbody></table></div>
<p class="note">Descriptions (no verdict: entropy rises with latent_dim, so these
correlations cannot separate the two): Spearman ρ of <code>{_esc(v.entropy_col)}</code>
and AUC with 95 % bootstrap intervals.</p>
<div class="tablewrap"><table class="data rho">
<thead><tr><th>trials</th><th>n</th><th>latent dims</th><th>Spearman ρ</th><th>95 % CI</th>
<th>note</th></tr></thead><tbody>
{_rho_row(v.over_rho, "over capacity (d ≥ d*)")}
{_rho_row(v.under_rho, "under capacity (d ≤ d*)")}
{_rho_row(v.overall_rho, "all trials (mixes both branches)")}
</tbody></table></div>
<div class="tablewrap"><table class="data pred">
<thead><tr><th>label-free prediction of d*</th><th>predicted d</th><th>observed d*</th>
<th>within reach of d*</th><th>AUC lost</th><th>from</th></tr></thead>
<tbody>{_prediction_rows(v)}</tbody></table></div>
</details>"""
        )
    parts.append(_robustness_table(ctx))
    ctx.page.add("verdicts", "Verdicts", "\n".join(parts))


def _glance_table(ctx: _Ctx) -> str:
    """One line per stratum: d*, the set within reach of it, both tests, predictions."""
    rows = []
    for v in ctx.verdicts:
        if v.best_latent_dim is None:
            best = "–"
        elif v.best_set:
            best = f"<b>{v.best_latent_dim}</b> {{{', '.join(str(d) for d in v.best_set)}}}"
        else:
            best = f"<b>{v.best_latent_dim}</b>"
        preds = " · ".join(
            f"{'intrinsic dim.' if 'intrinsic' in p.method else 'elbow'} "
            + (f"{p.predicted} ({H.format_ratio(p.ratio)})" if p.predicted else "–")
            for p in v.predictions
        )
        cells = "".join(
            f"<td>{_verdict_badge(t.verdict)} <span class='small'>{_p_text(t)}; "
            f"{_effect_text(t)}</span></td>"
            for t in (v.over, v.under)
        )
        rows.append(
            f"<tr><td>{_esc(v.dataset)}</td><td>{_esc(v.model)}</td><td>{best}</td>{cells}"
            f"<td class='small'>{_esc(v.uncertainty.level)}</td><td class='small'>{preds}</td>"
            "</tr>"
        )
    return (
        "<div class='tablewrap'><table class='data glance'><thead><tr><th>data set</th>"
        "<th>model</th><th>best d* {within reach}</th><th>over capacity: AUC(d*) − AUC(max d)"
        "</th><th>under capacity: AUC(d*) − AUC(min d)</th><th>uncertainty</th>"
        f"<th>label-free d (ratio to d*)</th></tr></thead><tbody>{''.join(rows)}</tbody>"
        "</table></div>"
    )


def _robustness_table(ctx: _Ctx) -> str:
    """The over-capacity Spearman rho for every entropy estimator (descriptive)."""
    cols = [c for c in ENTROPY_LABELS if _has_values(ctx.done, c)]
    if len(cols) < 2:
        return ""
    rows = []
    for v in ctx.verdicts[:MAX_PANELS]:
        g = ctx.done[ctx.done["_stratum"] == v.stratum]
        if v.best_latent_dim is None or g.empty:
            continue
        over = g[g["latent_dim"] >= v.best_latent_dim]
        dims = over["latent_dim"].to_numpy(dtype=int)
        y = pd.to_numeric(over["auc"], errors="coerce").to_numpy(dtype=float)
        cells = [f"<td>{_esc(v.stratum)}</td>"]
        for c in cols:
            h = pd.to_numeric(over[c], errors="coerce").to_numpy(dtype=float)
            r = H.correlation(dims, h, y, branch="over-capacity", n_boot=300, seed=0)
            rho = "–" if not math.isfinite(r.rho) else f"{r.rho:+.2f}"
            ci = "" if not math.isfinite(r.ci_low) else f" [{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
            cells.append(f"<td>{rho}<span class='small'>{ci}</span></td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    if not rows:
        return ""
    n = len(ctx.verdicts)
    more = f"; the first {MAX_PANELS} of {n} strata" if n > MAX_PANELS else ""
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    return (
        "<h3>Does the description depend on the estimator?</h3>"
        "<p class='note'>Over-capacity Spearman ρ (95 % bootstrap interval, 300 resamples) "
        f"for each latent statistic{more}.</p>"
        f"<div class='tablewrap'><table class='data'><thead><tr><th>stratum</th>{head}</tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _section_fixed_dim(ctx: _Ctx) -> None:
    """Entropy at fixed latent dimension: the paper's claim about entropy itself."""
    tests = ctx.fixed
    title = "Entropy at fixed latent dimension"
    if not tests:
        ctx.page.add("fixed", title, _na(title, "no completed trials"))
        return
    alpha = tests[0].p_adjusted
    rows = []
    for t in tests:
        groups = ", ".join(f"d={d}: {n}" for d, n in t.groups.items()) or "–"
        rho = f"{t.rho:+.2f}" if math.isfinite(t.rho) else "–"
        p = "–" if not math.isfinite(t.p_value) else f"p {H.format_p_clause(t.p_value)}"
        if math.isfinite(t.p_adjusted) and t.p_adjusted != t.p_value:
            p += f" (Holm {H.format_p(t.p_adjusted)})"
        lo, hi = t.entropy_range
        span = f"{lo:.2f} to {hi:.2f}" if math.isfinite(lo) else "–"
        rows.append(
            f"<tr><td>{_esc(t.dataset)}</td><td class='num'>{t.n}</td><td>{groups}</td>"
            f"<td class='num'>{span}</td><td class='num'>{rho}</td><td class='num'>{p}</td>"
            f"<td>{_verdict_badge(t.verdict)}</td><td class='reason'>{_esc(t.reason)}</td></tr>"
        )
    del alpha
    body = (
        "<p class='lead'>The paper's claim is about <b>entropy</b>, and every estimator "
        "rises with latent_dim, so the verdicts above cannot tell entropy from latent_dim. "
        "Here only trials that <b>share a latent_dim</b> are compared (per data set), where "
        "entropy differs through what else sets it: a VAE's kl_weight, a constrained AE's "
        "constraint_weight, MemAE's memory, weight decay or the seed. Test: the pooled "
        "within-latent_dim Spearman ρ of "
        f"<code>{_esc(ctx.entropy_col)}</code> and AUC, with a permutation null that "
        "permutes AUC within each latent_dim (two-sided, Holm across data sets). "
        "<b>supported</b>: lower entropy goes with higher AUC at p ≤ α; "
        "<b>contradicted</b>: higher entropy goes with higher AUC at p ≤ α.</p>"
        "<div class='tablewrap'><table class='data'><thead><tr><th>data set</th><th>n</th>"
        "<th>trials per latent_dim</th><th>entropy range</th><th>within-d ρ</th><th>p</th>"
        f"<th>verdict</th><th>why</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        "</div>"
    )
    ctx.page.add("fixed", title, body)


def _test_metric_note(run: RunData) -> str:
    """A banner when the search or early stopping optimised a test-set metric."""
    space = run.space or {}
    search = (space.get("search") or {}).get("type", "grid")
    sched = space.get("scheduler") or {}
    metric = str(sched.get("metric", "auc"))
    selecting = search == "optuna" or sched.get("type", "none") != "none"
    if not selecting or not _is_test_metric(metric):
        return ""
    what = " and ".join(
        w
        for w, on in (
            ("the search", search == "optuna"),
            ("early stopping", sched.get("type", "none") != "none"),
        )
        if on
    )
    return (
        f"<div class='banner'>⚠ Selected on test data: {what} optimised <code>"
        f"{_esc(metric)}</code>, which is measured on the test set; the best values "
        "are optimistic. Optimise a validation metric (<code>val_auc</code>) instead.</div>"
    )


def _is_test_metric(metric: str) -> bool:
    return not (
        metric.startswith("val_")
        or metric in ("train_loss", "recon_error_train_normal", "recon_error_val_normal")
    )


_EMPTY_AGG = pd.DataFrame(columns=["_stratum", "latent_dim", "mean", "std", "count"])


def _agg(ctx: _Ctx, metric: str, stratum: str | None = None) -> pd.DataFrame:
    """Mean/std/count over seeds per latent_dim of ``metric`` (all strata, or one)."""
    df = ctx.summary.get(metric)
    if df is None:
        return _EMPTY_AGG
    if stratum is None:
        return df
    key = ("by-stratum", metric)
    if key not in ctx.cache:
        ctx.cache[key] = {s: g for s, g in df.groupby("_stratum", sort=False)}
    return ctx.cache[key].get(stratum, _EMPTY_AGG)


def _summaries(done: pd.DataFrame, order: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Mean, std and count over seeds per (stratum, latent_dim) of every numeric metric,
    computed once; strata in ``order``, latent_dim ascending."""
    if done.empty:
        return {}
    cols = [c for c in SUMMARY_COLUMNS if c in done.columns]
    num = done[["_stratum", "latent_dim"]].copy()
    for c in cols:
        num[c] = _finite(done[c])
    g = num.groupby(["_stratum", "latent_dim"], sort=True)
    mean, std, count = g.mean(), g.std(), g.count()
    first = done.groupby("_stratum", sort=False)[["dataset", "model"]].first()
    rank = {s: i for i, s in enumerate(order)}
    out = {}
    for c in cols:
        df = pd.DataFrame({"mean": mean[c], "std": std[c], "count": count[c]}).reset_index()
        df = df[df["count"] > 0]
        df["dataset"] = df["_stratum"].map(first["dataset"]).astype(str)
        df["model"] = df["_stratum"].map(first["model"]).astype(str)
        df["_rank"] = df["_stratum"].map(rank).fillna(len(rank))
        out[c] = df.sort_values(["_rank", "latent_dim"], kind="stable").drop(columns="_rank")
    return out


def _curve_figure(
    ctx: _Ctx, metrics: Sequence[str], paper: pd.DataFrame | None, title: str
) -> dict:
    fig = _Fig(
        1, len(metrics), titles=[f"{METRIC_LABELS.get(m, m)} vs latent dimension" for m in metrics]
    )
    df = ctx.done
    dims_all = set(int(d) for d in df["latent_dim"].unique())
    for j, metric in enumerate(metrics, start=1):
        label = METRIC_LABELS.get(metric, metric)
        agg = _agg(ctx, metric)
        for stratum, g in agg.groupby("_stratum", sort=False):
            ds, model = g["dataset"].iloc[0], g["model"].iloc[0]
            colour = ctx.colours[ds]
            k = ctx.model_index[model]
            std = g["std"].fillna(0).to_numpy()
            fig.add(
                dict(
                    type="scatter",
                    x=g["latent_dim"].tolist(),
                    y=_arr(g["mean"]),
                    error_y=dict(
                        type="data", array=_arr(std), visible=True, thickness=1.2, width=4
                    ),
                    mode="lines+markers",
                    name=str(stratum),
                    legendgroup=str(stratum),
                    showlegend=j == 1,
                    line=dict(color=colour, dash=MODEL_DASHES[k % len(MODEL_DASHES)], width=2.4),
                    marker=dict(symbol=MODEL_SYMBOLS[k % len(MODEL_SYMBOLS)], size=8),
                    customdata=[[round(float(s), 4), int(n)] for s, n in zip(std, g["count"])],
                    hovertemplate=f"<b>{_esc(stratum)}</b><br>d = %{{x}}<br>{label} = %{{y:.3f}} ± "
                    "%{customdata[0]:.3f} (n = %{customdata[1]})<extra></extra>",
                ),
                1,
                j,
            )
            best = g.loc[g["mean"].idxmax()]
            fig.add(
                dict(
                    type="scatter",
                    x=[int(best["latent_dim"])],
                    y=[float(best["mean"])],
                    mode="markers",
                    name=f"best d ({stratum})",
                    legendgroup=str(stratum),
                    showlegend=False,
                    marker=dict(
                        symbol="star", size=18, color=colour, line=dict(color="black", width=1)
                    ),
                    hovertemplate=f"<b>best d for {_esc(stratum)}</b>: %{{x}}<br>{label} = "
                    "%{y:.3f}<extra></extra>",
                ),
                1,
                j,
            )
            pts = df[df["_stratum"] == stratum]
            fig.add(
                dict(
                    type="scatter",
                    x=pts["latent_dim"].tolist(),
                    y=_arr(pts[metric], 4),
                    mode="markers",
                    legendgroup=str(stratum),
                    showlegend=False,
                    name=f"trials ({stratum})",
                    marker=dict(color=colour, size=5, opacity=0.35),
                    text=ctx.hover.loc[pts.index].tolist(),
                    hovertemplate=f"{label} = %{{y:.3f}}<br>%{{text}}<extra></extra>",
                ),
                1,
                j,
            )
        if paper is not None:
            for ds in ctx.colours:
                pp = paper[(paper["_norm"] == _norm_label(ds)) & (paper["metric"] == metric)]
                if pp.empty:
                    continue
                pp = pp.sort_values("latent_dim")
                fig.add(
                    dict(
                        type="scatter",
                        x=pp["latent_dim"].tolist(),
                        y=_arr(pp["mean"] / 100),
                        mode="lines+markers",
                        name=f"paper: {pp['dataset'].iloc[0]} (AE)",
                        legendgroup=f"paper-{ds}",
                        showlegend=j == 1,
                        line=dict(color=ctx.colours[ds], dash="dot", width=1.5),
                        marker=dict(size=5, symbol="circle-open"),
                        opacity=0.7,
                        hovertemplate="paper, d = %{x}: %{y:.3f}<extra></extra>",
                    ),
                    1,
                    j,
                )
                dims_all |= set(int(d) for d in pp["latent_dim"])
        fig.y(1, j)["title"] = _title(label)
    for j in range(1, len(metrics) + 1):
        fig.x(1, j).update(_log2_axis(sorted(dims_all)))
    n_legend = sum(1 for t in fig.data if t.get("showlegend"))
    # a long legend goes to the right (plotly's default), a short one below the plot
    below = dict(legend=LEGEND_BELOW, margin=MARGIN_LEGEND_BELOW) if n_legend <= 8 else {}
    return fig.to_dict(height=470, title=dict(text=title, x=0.01), hovermode="closest", **below)


def _table1(ctx: _Ctx, metrics: Sequence[str], paper: pd.DataFrame | None) -> str:
    """Mean ± std ×100 per latent_dim (columns descending, as in the paper's Table 1);
    best bold, second underlined; the paper's row under a study row of the same label."""
    df = ctx.done
    dims = sorted({int(d) for d in df["latent_dim"].unique()}, reverse=True)
    paper_dims: list[int] = []
    if paper is not None:
        matched = paper[paper["_norm"].isin({_norm_label(d) for d in ctx.colours})]
        paper_dims = sorted({int(d) for d in matched["latent_dim"].unique()}, reverse=True)
    dims = sorted(set(dims) | set(paper_dims), reverse=True)

    def cells(values: dict[int, tuple[float, float]]) -> str:
        means = sorted({round(m, 10) for m, _ in values.values() if math.isfinite(m)}, reverse=True)
        first = means[0] if means else None
        second = means[1] if len(means) > 1 else None
        out = []
        for d in dims:
            if d not in values or not math.isfinite(values[d][0]):
                out.append("<td class='num'>–</td>")
                continue
            m, s = values[d]
            txt = f"{m:.1f}" + (f" ± {s:.1f}" if math.isfinite(s) else "")
            if first is not None and round(m, 10) == first:
                txt = f"<b>{txt}</b>"
            elif second is not None and round(m, 10) == second:
                txt = f"<u>{txt}</u>"
            out.append(f"<td class='num'>{txt}</td>")
        return "".join(out)

    rows = []
    paper_shown: set[tuple[str, str]] = set()  # the paper's row once per data set and metric
    for v in ctx.verdicts:
        for metric in metrics:
            a = _agg(ctx, metric, v.stratum)
            if a.empty:
                continue
            vals = {int(r.latent_dim): (100 * r.mean, 100 * r.std) for r in a.itertuples()}
            rows.append(
                f"<tr><td>{_esc(v.dataset)}</td><td>{_esc(v.model)}</td>"
                f"<td>{METRIC_LABELS.get(metric, metric)}</td>{cells(vals)}</tr>"
            )
            if paper is not None and (v.dataset, metric) not in paper_shown:
                paper_shown.add((v.dataset, metric))
                pp = paper[(paper["_norm"] == _norm_label(v.dataset)) & (paper["metric"] == metric)]
                if not pp.empty:
                    pvals = {int(r.latent_dim): (r.mean, r.std) for r in pp.itertuples()}
                    rows.append(
                        f"<tr class='paper'><td>{_esc(pp['dataset'].iloc[0])}</td>"
                        f"<td>paper (AE)</td><td>{METRIC_LABELS.get(metric, metric)}</td>"
                        f"{cells(pvals)}</tr>"
                    )
    if not rows:
        return ""
    head = "".join(f"<th>d = {d}</th>" for d in dims)
    return (
        "<h3>Table 1 format: mean ± std over seeds, ×100</h3>"
        "<p class='note'>Best per row in <b>bold</b>, second <u>underlined</u>. Grey rows are "
        "the paper's published numbers (Cai et al. 2024, Table 1, 3 runs) for a data set of "
        "the same label.</p>"
        f"<div class='tablewrap'><table class='data t1'><thead><tr><th>data set</th>"
        f"<th>model</th><th>metric</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
        "</table></div>"
    )


def _section_detection(ctx: _Ctx, paper1: pd.DataFrame | None) -> None:
    if ctx.done.empty:
        ctx.page.add("detection", "1. Detection vs latent dimension", _na("AUC and AP curves"))
        return
    metrics = [m for m in ("auc", "ap") if _has_values(ctx.done, m)]
    fig = _curve_figure(ctx, metrics, paper1, "Image-level detection vs latent dimension")
    body = ctx.page.figure(
        fig,
        "Mean ± std over seeds (lines, error bars); faint dots are single trials (hover for "
        "the config); ★ marks the best latent dimension; dotted lines are the paper's numbers "
        "for a data set of the same label.",
    )
    body += _table1(ctx, [*metrics, "pixel_ap", "best_dice"], paper1)
    ctx.page.add("detection", "1. Detection vs latent dimension", body)


def _section_entropy(ctx: _Ctx) -> None:
    title = "2. Latent entropy vs AUC"
    cols = [c for c in ENTROPY_LABELS if _has_values(ctx.done, c)]
    if not cols:
        ctx.page.add("entropy", title, _na("Latent statistics", "no latent_entropy_* columns"))
        return
    default = ctx.entropy_col if ctx.entropy_col in cols else cols[0]
    datasets = list(ctx.colours)
    nr, nc = _grid(len(datasets))
    height = max(430, 360 * nr + 90)
    fig = _Fig(nr, nc, titles=datasets, hspace=0.07, vspace=_vspace(height, nr))
    df = ctx.done
    log_d = np.log2(df["latent_dim"].astype(float)).round(4)
    dims = sorted(int(d) for d in df["latent_dim"].unique())
    traces_x: dict[str, list] = {c: [] for c in cols}
    for i, ds in enumerate(datasets):
        r, c = divmod(i, nc)
        for model, g in df[df["dataset"] == ds].groupby("model", sort=False):
            k = ctx.model_index[model]
            fig.add(
                dict(
                    type="scatter",
                    x=_arr(g[default]),
                    y=_arr(g["auc"], 4),
                    mode="markers",
                    name=f"{ds}/{model}",
                    showlegend=len(ctx.model_index) > 1,
                    marker=dict(
                        color=log_d.loc[g.index].tolist(),
                        coloraxis="coloraxis",
                        size=8,
                        symbol=MODEL_SYMBOLS[k % len(MODEL_SYMBOLS)],
                        opacity=0.85,
                        line=dict(width=0.5, color="#333"),
                    ),
                    text=ctx.hover.loc[g.index].tolist(),
                    hovertemplate="latent statistic = %{x:.3g}<br>AUC = %{y:.3f}<br>%{text}"
                    "<extra></extra>",
                ),
                r + 1,
                c + 1,
            )
            for col in cols:
                traces_x[col].append(_arr(g[col]))
        fig.y(r + 1, 1)["title"] = _title("AUC")
    fig.hide_unused(len(datasets))
    n_axes = len(datasets)
    for k in range(1, n_axes + 1):
        fig.layout[_axis_name("xaxis", k)]["title"] = _title(ENTROPY_LABELS[default])
    buttons = []
    for col in cols:
        relabel = {
            f"{_axis_name('xaxis', k)}.title.text": ENTROPY_LABELS[col]
            for k in range(1, n_axes + 1)
        }
        buttons.append(dict(label=col, method="update", args=[{"x": traces_x[col]}, relabel]))
    lo, hi = math.log2(dims[0]), math.log2(dims[-1])
    layout = fig.to_dict(
        height=height,
        title=dict(text="Latent statistic vs AUC, coloured by latent dimension", x=0.01),
        coloraxis=dict(
            colorscale=_scale("Viridis"),
            cmin=lo,
            cmax=hi if hi > lo else lo + 1,
            colorbar=dict(
                title=_title("d"),
                tickmode="array",
                tickvals=[round(math.log2(d), 4) for d in dims],
                ticktext=[str(d) for d in dims],
                len=0.9,
            ),
        ),
        updatemenus=[
            dict(
                buttons=buttons,
                direction="down",
                x=1.0,
                xanchor="right",
                y=1.0,
                yanchor="bottom",
                pad=dict(b=30),
                showactive=True,
                active=cols.index(default),
            )
        ],
        legend=LEGEND_BELOW,
        margin={**MARGIN_LEGEND_BELOW, "t": 90},
    )
    body = ctx.page.figure(
        layout,
        "Each dot is a completed trial (hover for its config). Pick the latent statistic with "
        "the menu at the top right. The paper predicts AUC to fall as entropy grows beyond the "
        "best latent dimension.",
    )
    ctx.page.add("entropy", title, body)


def _score_unit(df: pd.DataFrame) -> str:
    if "score" in df.columns and df["score"].nunique() == 1:
        return SCORE_UNITS.get(str(df["score"].iloc[0]), "reconstruction error")
    return "reconstruction error"


def _section_recon(ctx: _Ctx) -> None:
    title = "3. Reconstruction error vs latent dimension"
    splits = [s for s in RECON_SPLITS if _has_values(ctx.done, s[0])]
    if not splits:
        ctx.page.add("recon", title, _na("Reconstruction errors", "no recon_error_* columns"))
        return
    strata = [v.stratum for v in ctx.verdicts][:MAX_PANELS]
    nr, nc = _grid(len(strata))
    height = max(400, 340 * nr + 90)
    fig = _Fig(nr, nc, titles=strata, hspace=0.07, vspace=_vspace(height, nr))
    unit = _score_unit(ctx.done)
    for i, stratum in enumerate(strata):
        r, c = divmod(i, nc)
        for col, label, colour, dash in splits:
            a = _agg(ctx, col, stratum)
            if a.empty:
                continue
            fig.add(
                dict(
                    type="scatter",
                    x=a["latent_dim"].tolist(),
                    y=_arr(a["mean"], 6),
                    name=label,
                    legendgroup=label,
                    showlegend=i == 0,
                    mode="lines+markers",
                    line=dict(color=colour, dash=dash, width=2.2),
                    marker=dict(size=6),
                    error_y=dict(
                        type="data",
                        array=_arr(a["std"].fillna(0), 6),
                        visible=True,
                        thickness=1,
                        width=3,
                    ),
                    hovertemplate=f"{label}<br>d = %{{x}}<br>{unit} = %{{y:.4g}}<extra></extra>",
                ),
                r + 1,
                c + 1,
            )
        dims = ctx.done.loc[ctx.done["_stratum"] == stratum, "latent_dim"].unique()
        fig.x(r + 1, c + 1).update(_log2_axis(dims))
        if c == 0:
            fig.y(r + 1, 1)["title"] = _title(unit)
    fig.hide_unused(len(strata))
    spec = fig.to_dict(
        height=height,
        legend=LEGEND_BELOW,
        margin=MARGIN_LEGEND_BELOW,
        title=dict(text="Reconstruction error by split (the paper's Figure 3)", x=0.01),
    )
    more = (
        f" First {len(strata)} of {len(ctx.verdicts)} strata."
        if len(ctx.verdicts) > len(strata)
        else ""
    )
    body = ctx.page.figure(
        spec,
        "Mean ± std over seeds of the per-image reconstruction error. Over capacity the "
        "abnormal error falls towards the normal one: the autoencoder starts to reconstruct "
        "anomalies too." + more,
    )
    ctx.page.add("recon", title, body)


def _section_pixel(ctx: _Ctx) -> None:
    title = "4. Pixel-level segmentation vs latent dimension"
    metrics = [m for m in ("pixel_ap", "best_dice") if _has_values(ctx.done, m)]
    if not metrics:
        ctx.page.add("pixel", title, _na("Pixel AP and best Dice", "no data set with masks"))
        return
    sub = ctx.done[ctx.done[metrics].apply(_finite).notna().any(axis=1)]
    sub_ctx = replace(ctx, done=sub)
    fig = _curve_figure(sub_ctx, metrics, None, "Pixel-level metrics vs latent dimension")
    body = ctx.page.figure(fig, "Mean ± std over seeds; only data sets with anomaly masks.")
    ctx.page.add("pixel", title, body)


def _section_methods(ctx: _Ctx, paper2: pd.DataFrame | None) -> None:
    title = "5. Methods comparison"
    models = list(ctx.model_index)
    if len(models) < 2:
        ctx.page.add(
            "methods",
            title,
            _note(
                f"One model only ({_esc(', '.join(models)) or '–'})"
                ": a methods comparison needs several."
            ),
        )
        return
    df = ctx.done
    datasets = list(ctx.colours)
    metrics = [m for m in ("auc", "ap", "pixel_ap", "best_dice") if m in ctx.summary]
    stratum_of = {(v.dataset, v.model): v.stratum for v in ctx.verdicts}
    lookup = {}
    for m in metrics:
        t = ctx.summary[m]
        lookup[m] = {
            (st, int(d)): (mu, sd)
            for st, d, mu, sd in zip(t["_stratum"], t["latent_dim"], t["mean"], t["std"])
        }
    common = sorted(set.intersection(*[set(g["latent_dim"]) for _, g in df.groupby("model")]))
    common_d = 16 if 16 in common else (common[len(common) // 2] if common else None)
    rows: list[tuple[str, str, dict]] = []  # (row label, css class, {(ds, metric): text})
    values: dict[tuple[str, str], list[float]] = {}
    best_d = {(v.dataset, v.model): v.best_latent_dim for v in ctx.verdicts}
    for model in models:
        settings = [("common", common_d)] if common_d is not None else []
        settings.append(("best", None))
        for kind, d in settings:
            cells = {}
            for ds in datasets:
                dd = d if kind == "common" else best_d.get((ds, model))
                key = (stratum_of.get((ds, model)), dd)
                for m in metrics:
                    if key not in lookup[m]:
                        continue
                    mean, std = (100 * v for v in lookup[m][key])
                    txt = f"{mean:.1f}" + (f" ± {std:.1f}" if math.isfinite(std) else "")
                    if kind == "best":
                        txt += f" <span class='muted'>(d={dd})</span>"
                    cells[(ds, m)] = (mean, txt)
                    values.setdefault((ds, m), []).append(round(mean, 10))
            label = f"{model} (d = {common_d})" if kind == "common" else f"{model} (best d)"
            rows.append((label, "", cells))
    if paper2 is not None:
        for method in ("ae", "vae", "memae", "ceae", "ae_dopt"):
            cells = {}
            for ds in datasets:
                pp = paper2[(paper2["_norm"] == _norm_label(ds)) & (paper2["method"] == method)]
                for r in pp.itertuples():
                    if r.metric in metrics:
                        cells[(ds, r.metric)] = (None, f"{r.mean:.1f} ± {r.std:.1f}")
            if cells:
                lab = "paper: AE, d_opt" if method == "ae_dopt" else f"paper: {method} (d = 16)"
                rows.append((lab, "paper", cells))
    head1 = "".join(f"<th colspan='{len(metrics)}'>{_esc(ds)}</th>" for ds in datasets)
    head2 = "".join(f"<th>{METRIC_LABELS[m]}</th>" for _ in datasets for m in metrics)
    body_rows = []
    for label, cls, cells in rows:
        tds = []
        for ds in datasets:
            for m in metrics:
                if (ds, m) not in cells:
                    tds.append("<td class='num'>–</td>")
                    continue
                mean, txt = cells[(ds, m)]
                if mean is not None and round(mean, 10) == max(values[(ds, m)]):
                    txt = f"<b>{txt}</b>"
                tds.append(f"<td class='num'>{txt}</td>")
        body_rows.append(f"<tr class='{cls}'><td>{_esc(label)}</td>{''.join(tds)}</tr>")
    body = (
        "<p class='note'>Table 2 format: mean ± std ×100 over seeds at a latent dimension "
        "shared by all models and at each model's best one; the best study value per column "
        "in <b>bold</b>. Grey rows: the paper's Table 2 for a data set of the same label.</p>"
        f"<div class='tablewrap'><table class='data t2'><thead><tr><th rowspan='2'>method"
        f"</th>{head1}</tr><tr>{head2}</tr></thead><tbody>{''.join(body_rows)}</tbody>"
        "</table></div>"
    )
    ctx.page.add("methods", title, body)


def _objective(run: RunData) -> tuple[str, str]:
    """The search objective (metric name, label) of a run: scheduler.metric of its space."""
    sched = (run.space or {}).get("scheduler")
    metric = sched.get("metric") if isinstance(sched, dict) else None
    metric = metric if isinstance(metric, str) and metric else "auc"
    return metric, METRIC_LABELS.get(metric, metric)


def _load_studies(ctx: _Ctx) -> tuple[list[tuple[str, Any]], list[str]]:
    """(name, optuna.Study) of every study in optuna.db (the first MAX_PANELS by name),
    and notes on what could not be read. Cached in ``ctx``."""
    if "optuna_studies" in ctx.cache:
        return ctx.cache["optuna_studies"]
    notes: list[str] = []
    studies: list[tuple[str, Any]] = []
    try:
        import optuna
    except ImportError:
        ctx.cache["optuna_studies"] = ([], ["optuna is not installed"])
        return ctx.cache["optuna_studies"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{ctx.run.optuna_db.resolve()}"
    try:
        names = sorted(optuna.get_all_study_names(storage=url))
    except Exception as exc:  # noqa: BLE001 - a broken database is reported, not raised
        names = []
        notes.append(f"optuna.db could not be read ({type(exc).__name__}: {exc})")
    if len(names) > MAX_PANELS:
        notes.append(f"first {MAX_PANELS} of {len(names)} Optuna studies shown")
    for name in names[:MAX_PANELS]:
        try:
            studies.append((name, optuna.load_study(study_name=name, storage=url)))
        except Exception as exc:  # noqa: BLE001
            notes.append(f"study {name!r} could not be loaded ({exc})")
    ctx.cache["optuna_studies"] = (studies, notes)
    return studies, notes


def _trial_points(study: Any) -> list[dict[str, Any]]:
    """Every trial of an Optuna study as a plot point: ``kind`` completed | stopped
    (PRUNED: its value is its last intermediate value, at ``epoch``) | failed (no value:
    FAIL, or PRUNED without intermediate values) | running."""
    import optuna

    state = optuna.trial.TrialState
    points = []
    for t in study.get_trials(deepcopy=False):
        value, epoch = t.value, None
        if t.state == state.PRUNED and t.intermediate_values:
            epoch, value = max(t.intermediate_values.items())
        if t.state == state.COMPLETE and value is not None:
            kind = "completed"
        elif t.state == state.PRUNED and value is not None:
            kind = "stopped"
        elif t.state in (state.RUNNING, state.WAITING):
            kind = "running"
        else:
            kind, value = "failed", None
        if value is not None and not math.isfinite(float(value)):
            kind, value = "failed", None
        points.append(
            dict(number=t.number, kind=kind, value=value, epoch=epoch, params=dict(t.params))
        )
    return points


MIN_IMPORTANCE_TRIALS = 3  # completed trials below which fANOVA importances mean nothing
_POINT_STYLE = {
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


def _optuna_figure(ctx: _Ctx) -> tuple[str, list[str]]:
    try:
        from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    except ImportError:
        return "", ["optuna is not installed"]
    studies, notes = _load_studies(ctx)
    notes = list(notes)
    if not studies:
        return "", notes or ["optuna.db holds no study"]
    _, label = _objective(ctx.run)
    names = [n for n, _ in studies]
    titles = [
        t for n in names for t in (f"{n}: optimisation history", f"{n}: parameter importance")
    ]
    fig = _Fig(
        len(names),
        2,
        titles=titles,
        widths=[0.62, 0.38],
        hspace=0.16,
        vspace=_vspace(300 * len(names) + 130, len(names)),
    )
    shown_legend: set[str] = set()
    for i, (name, study) in enumerate(studies, start=1):
        points = _trial_points(study)
        if not points:
            notes.append(f"study {name!r} has no trial")
            continue
        maximize = study.direction.name == "MAXIMIZE"
        values = [p["value"] for p in points if p["value"] is not None]
        floor = min(values) if values else 0.0
        for kind, (legend, marker) in _POINT_STYLE.items():
            group = [p for p in points if p["kind"] == kind]
            if not group:
                continue
            txt = []
            for p in group:
                lines = [f"{k}: {_fmt(v, 4)}" for k, v in p["params"].items()]
                if kind == "stopped":
                    lines.insert(0, f"early-stopped at epoch {p['epoch']}")
                elif kind == "failed":
                    lines.insert(0, "failed (no value)")
                txt.append("<br>".join(lines))
            fig.add(
                dict(
                    type="scatter",
                    x=[p["number"] for p in group],
                    y=_arr([floor if p["value"] is None else p["value"] for p in group]),
                    mode="markers",
                    name=legend,
                    marker=marker,
                    showlegend=kind not in shown_legend,
                    legendgroup=kind,
                    text=txt,
                    hovertemplate="trial %{x}: %{y:.4f}<br>%{text}<extra></extra>"
                    if kind != "failed"
                    else "trial %{x}<br>%{text}<extra></extra>",
                ),
                i,
                1,
            )
            shown_legend.add(kind)
        done = [p for p in points if p["kind"] == "completed"]
        if done:
            y = [float(p["value"]) for p in done]
            run_best = list(np.maximum.accumulate(y) if maximize else np.minimum.accumulate(y))
            x = [p["number"] for p in done]
            last = max(p["number"] for p in points)
            if last > x[-1]:  # the best so far holds until the last trial
                x, run_best = [*x, last], [*run_best, run_best[-1]]
            fig.add(
                dict(
                    type="scatter",
                    x=x,
                    y=_arr(run_best),
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
        counts = {k: sum(p["kind"] == k for p in points) for k in ("completed", "stopped")}
        failed = sum(p["kind"] == "failed" for p in points)
        notes.append(
            f"{name}: {len(points)} trials: {counts['completed']} completed, "
            f"{counts['stopped']} early-stopped"
            + (f", {failed} failed or without a value" if failed else "")
        )
        fig.x(i, 1)["title"] = _title("trial number")
        fig.y(i, 1)["title"] = _title(f"objective ({label})")
        imp = {}
        if counts["completed"] < MIN_IMPORTANCE_TRIALS:
            notes.append(
                f"{name}: parameter importances {NOT_AVAILABLE} ({counts['completed']} "
                f"completed trial(s); fANOVA needs {MIN_IMPORTANCE_TRIALS})"
            )
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    imp = get_param_importances(
                        study, evaluator=FanovaImportanceEvaluator(seed=0, n_trees=32)
                    )
            except Exception as exc:  # noqa: BLE001 - e.g. one parameter
                notes.append(f"{name}: parameter importances {NOT_AVAILABLE} ({exc})")
        if imp:
            keys = list(imp)[::-1]
            fig.add(
                dict(
                    type="bar",
                    x=_arr([imp[k] for k in keys], 4),
                    y=keys,
                    orientation="h",
                    marker=dict(color="#009E73"),
                    showlegend=False,
                    hovertemplate="%{y}: %{x:.3f}<extra></extra>",
                ),
                i,
                2,
            )
            fig.x(i, 2)["title"] = _title("importance (fANOVA)")
            fig.y(i, 2)["automargin"] = True
    spec = fig.to_dict(
        height=300 * len(names) + 130,
        legend=LEGEND_BELOW,
        margin=MARGIN_LEGEND_BELOW,
        title=dict(text="Optuna search per stratum", x=0.01),
    )
    html_ = ctx.page.figure(
        spec,
        "From optuna.db: every trial of each study. Completed trials at their final value; "
        "early-stopped (pruned) ones at the value of the evaluation they were stopped on, "
        "which is earlier in training and not comparable with a final value; the best "
        "completed value so far; fANOVA importance of each searched parameter.",
    )
    return html_, notes


LATENT_PARAM = "model.latent_dim"  # the Optuna parameter name of latent_dim
MIN_PD_TRIALS = 5  # completed trials a partial-dependence estimate needs (and 3 latent_dims)


def _partial_dependence(points: list[dict], grid: Sequence[float]) -> list[float] | None:
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


def _latent_dependence(ctx: _Ctx) -> str:
    """Searched studies: the objective against latent_dim per stratum, every trial (as
    Optuna's slice plot), with a partial-dependence estimate from the completed trials."""
    if ctx.run.optuna_db is None:
        return ""
    studies, _ = _load_studies(ctx)
    panels = []
    for name, study in studies:
        points = [
            p
            for p in _trial_points(study)
            if p["kind"] in ("completed", "stopped") and LATENT_PARAM in p["params"]
        ]
        if points:
            panels.append((str(study.user_attrs.get("stratum") or name), points))
    title = "<h3 id='latent-dependence'>Partial dependence of the objective on latent_dim</h3>"
    if not panels:
        return title + _na("A slice over latent_dim", "latent_dim is not searched by Optuna")
    _, label = _objective(ctx.run)
    nr, nc = _grid(len(panels))
    height = max(400, 330 * nr + 130)
    fig = _Fig(nr, nc, titles=[k for k, _ in panels], hspace=0.07, vspace=_vspace(height, nr))
    notes, shown_legend = [], set()
    for i, (key, points) in enumerate(panels):
        r, c = divmod(i, nc)
        for kind in ("completed", "stopped"):
            group = [p for p in points if p["kind"] == kind]
            if not group:
                continue
            legend, marker = _POINT_STYLE[kind]
            txt = []
            for p in group:
                lines = [f"trial {p['number']}"]
                if kind == "stopped":
                    lines.append(f"early-stopped at epoch {p['epoch']}")
                lines += [f"{k}: {_fmt(v, 4)}" for k, v in p["params"].items()]
                txt.append("<br>".join(lines))
            fig.add(
                dict(
                    type="scatter",
                    x=[p["params"][LATENT_PARAM] for p in group],
                    y=_arr([p["value"] for p in group]),
                    mode="markers",
                    name=legend,
                    marker=marker,
                    legendgroup=kind,
                    showlegend=kind not in shown_legend,
                    text=txt,
                    hovertemplate="latent_dim %{x}: %{y:.4f}<br>%{text}<extra></extra>",
                ),
                r + 1,
                c + 1,
            )
            shown_legend.add(kind)
        dims = sorted(float(p["params"][LATENT_PARAM]) for p in points)
        lo, hi = dims[0], dims[-1]
        done = [p for p in points if p["kind"] == "completed"]
        grid = sorted({lo, hi, *np.geomspace(max(lo, 1e-9), max(hi, 1e-9), 40).tolist()})
        curve = _partial_dependence(done, grid) if hi > lo else None
        if curve is not None:
            fig.add(
                dict(
                    type="scatter",
                    x=_arr(grid, 3),
                    y=_arr(curve),
                    mode="lines",
                    name="partial dependence (completed trials)",
                    line=dict(color="#D55E00", width=2.5),
                    legendgroup="pd",
                    showlegend="pd" not in shown_legend,
                    hovertemplate="latent_dim %{x:.0f}: %{y:.4f}<extra>partial dependence</extra>",
                ),
                r + 1,
                c + 1,
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
        fig.x(r + 1, c + 1).update(_log2_axis([2**k for k in range(k0, k1 + 1)], "latent_dim"))
        if c == 0:
            fig.y(r + 1, 1)["title"] = _title(label)
    fig.hide_unused(len(panels))
    spec = fig.to_dict(
        height=height,
        legend=LEGEND_BELOW,
        margin=MARGIN_LEGEND_BELOW,
        title=dict(text=f"{label} against latent_dim in the search, per stratum", x=0.01),
    )
    caption = (
        "Every trial of each Optuna study against its latent_dim, as in Optuna's slice "
        "plot: completed trials at their final value, early-stopped ones at the value "
        "they were stopped on (earlier in training). The line is a partial dependence: "
        "a random forest fitted to the completed trials' searched parameters, predicted "
        "for each latent_dim with the other parameters at their observed values and "
        "averaged. Where lr or widths vary together with latent_dim this describes the "
        "search; it does not isolate latent_dim as a grid over it does."
    )
    return title + ctx.page.figure(spec, caption) + "".join(_note(_esc(n)) for n in notes)


def _learning_curves(ctx: _Ctx) -> str:
    hist = ctx.run.history
    if hist is None or not {"trial_id", "epoch", "auc"} <= set(hist.columns):
        why = ctx.run.notes.get("history", "history.parquet has no trial_id/epoch/auc")
        return _na("Learning curves", why)
    t = ctx.all_trials
    if "trial_id" not in t.columns:
        return _na("Learning curves", "the trials table has no trial_id")
    h = hist[["trial_id", "epoch", "auc"]].copy()
    h["trial_id"] = h["trial_id"].astype(str)
    h["auc"] = _finite(h["auc"])
    h["epoch"] = _finite(h["epoch"])
    h = h.dropna(subset=["epoch"])
    keep = ["trial_id", "_stratum", "latent_dim", "seed", "status"]
    meta = t[[c for c in keep if c in t.columns]].drop_duplicates("trial_id").copy()
    meta["trial_id"] = meta["trial_id"].astype(str)
    h = h.merge(meta, on="trial_id", how="inner")
    if not {"latent_dim", "_stratum"} <= set(h.columns):
        return _na("Learning curves", "the trials table has no latent_dim")
    h = h[_finite(h["latent_dim"]) > 0]
    if h.empty:
        return _na("Learning curves", "no history rows match the trials")
    ids = pd.Series(h["trial_id"].unique())
    shown = ids if len(ids) <= ctx.max_curves else ids.sample(ctx.max_curves, random_state=0)
    h = h[h["trial_id"].isin(set(shown))].sort_values(["trial_id", "epoch"], kind="stable")
    order = [v.stratum for v in ctx.verdicts] + list(h["_stratum"].unique())
    present = set(h["_stratum"])
    strata = [s for s in dict.fromkeys(order) if s in present][:MAX_PANELS]
    nr, nc = _grid(len(strata))
    height = max(380, 320 * nr + 90)
    fig = _Fig(nr, nc, titles=strata, hspace=0.07, vspace=_vspace(height, nr))
    h["latent_dim"] = h["latent_dim"].astype(int)
    dims = sorted(h["latent_dim"].unique())
    lo, hi = math.log2(dims[0]), math.log2(dims[-1])
    span = hi - lo if hi > lo else 1.0
    colours = {d: sample_colorscale("Viridis", [(math.log2(d) - lo) / span])[0] for d in dims}
    shown_legend: set[int] = set()
    # the x axis spans the planned epochs: trials stopped early end visibly short of it
    planned = _finite(t["epochs"]).max() if "epochs" in t.columns else math.nan
    max_epoch = float(np.nanmax([h["epoch"].max(), planned]))
    for i, stratum in enumerate(strata):
        r, c = divmod(i, nc)
        g = h[h["_stratum"] == stratum]
        for d, gd in g.groupby("latent_dim", sort=True):
            xs: list = []
            ys: list = []
            texts: list = []
            dots: tuple[list, list, list] = ([], [], [])  # trials with one evaluation
            for tid, gt in gd.groupby("trial_id", sort=False):
                seed = gt["seed"].iloc[0] if "seed" in gt.columns else ""
                status = gt["status"].iloc[0] if "status" in gt.columns else ""
                label = f"trial {tid}<br>d = {int(d)}, seed {seed}<br>{status}"
                if len(gt) == 1:  # a line needs two points: a marker instead
                    dots[0].append(gt["epoch"].iloc[0])
                    dots[1].extend(_arr(gt["auc"], 4))
                    dots[2].append(label)
                    continue
                xs += [*gt["epoch"].tolist(), None]
                ys += [*_arr(gt["auc"], 4), None]
                texts += [label] * len(gt) + [None]
            if dots[0]:
                fig.add(
                    dict(
                        type="scatter",
                        x=dots[0],
                        y=dots[1],
                        text=dots[2],
                        mode="markers",
                        name=f"d = {int(d)}",
                        legendgroup=f"d{int(d)}",
                        showlegend=not xs and int(d) not in shown_legend,
                        marker=dict(color=colours[int(d)], size=6, line=dict(width=0)),
                        opacity=0.8,
                        hovertemplate="%{text}<br>epoch %{x}: AUC %{y:.3f}<extra></extra>",
                    ),
                    r + 1,
                    c + 1,
                )
            if not xs:
                shown_legend.add(int(d))
                continue
            fig.add(
                dict(
                    type="scatter",
                    x=xs,
                    y=ys,
                    text=texts,
                    mode="lines",
                    name=f"d = {int(d)}",
                    legendgroup=f"d{int(d)}",
                    showlegend=int(d) not in shown_legend,
                    line=dict(color=colours[int(d)], width=1.3),
                    opacity=0.8,
                    hovertemplate="%{text}<br>epoch %{x}: AUC %{y:.3f}<extra></extra>",
                ),
                r + 1,
                c + 1,
            )
            shown_legend.add(int(d))
        fig.x(r + 1, c + 1)["title"] = _title("epoch")
        fig.x(r + 1, c + 1)["range"] = [0, max_epoch * 1.04]
        if c == 0:
            fig.y(r + 1, 1)["title"] = _title("AUC")
    fig.hide_unused(len(strata))
    spec = fig.to_dict(
        height=height,
        title=dict(text="Learning curves: test AUC per evaluation", x=0.01),
        legend=dict(title=_title("latent dim")),
    )
    cap = f"{len(shown)} of {len(ids)} trials shown"
    cap += " (a fixed random subset)." if len(shown) < len(ids) else "."
    cap += " A trial with a single evaluation (e.g. stopped at the first rung) is a dot."
    return ctx.page.figure(spec, cap)


def _section_search(ctx: _Ctx) -> None:
    title = "6. Search diagnostics"
    parts = []
    if ctx.run.optuna_db is not None:
        fig_html, notes = _optuna_figure(ctx)
        parts.append(fig_html)
        parts += [_note(_esc(n)) for n in notes]
        parts.append(_latent_dependence(ctx))
    else:
        parts.append(
            _na(
                "Optuna optimisation history and parameter importances",
                "no optuna.db: a grid search",
            )
        )
    t = ctx.all_trials
    if "status" in t.columns and len(t):
        counts = pd.crosstab(t["_stratum"], t["status"]).reset_index()
        counts = counts.rename(columns={"_stratum": "stratum"})
        parts.append("<h3>Trials by status</h3>" + _table_html(counts))
        stopped = t[t["status"].isin(["early-stopped", "diverged", "errored"])]
        if len(stopped):
            cols = [
                c
                for c in (
                    "trial_id",
                    "stratum",
                    "latent_dim",
                    "seed",
                    "status",
                    "epochs_done",
                    "best_auc",
                    "error",
                )
                if c in stopped.columns
            ]
            shown = stopped[cols].head(50).copy()
            if "error" in shown.columns:
                shown["error"] = shown["error"].map(
                    lambda e: "" if e is None or pd.isna(e) else str(e)[:160]
                )
            more = f" (first 50 of {len(stopped)})" if len(stopped) > 50 else ""
            parts.append(
                f"<h3>Trials stopped early, diverged or errored{more}</h3>" + _table_html(shown)
            )
        else:
            parts.append(_note("No trial was stopped early, diverged or errored."))
    parts.append(_learning_curves(ctx))
    ctx.page.add("search", title, "\n".join(parts))


def _image_2d(a: Any, max_side: int = 64) -> np.ndarray | None:
    arr = np.asarray(a, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr.mean(axis=0)
    if arr.ndim != 2 or arr.size == 0:
        return None
    step = max(1, math.ceil(max(arr.shape) / max_side))
    if step > 1:
        h, w = (arr.shape[0] // step) * step, (arr.shape[1] // step) * step
        arr = arr[:h, :w].reshape(h // step, step, w // step, step).mean(axis=(1, 3))
    return np.round(arr, 3).astype(np.float32)


def _pick_example_trials(ctx: _Ctx, v: H.StratumVerdict) -> list[tuple[str, int, str]]:
    ex = ctx.run.examples
    if ex is None or "trial_id" not in ctx.done.columns:
        return []
    g = ctx.done[ctx.done["_stratum"] == v.stratum]
    g = g[g["trial_id"].astype(str).map(lambda t: t in ex)]
    if g.empty:
        return []
    dims = sorted(g["latent_dim"].unique())
    wanted = [("small", dims[0]), ("best", v.best_latent_dim), ("large", dims[-1])]
    out, seen = [], set()
    for label, d in wanted:
        if d is None or d in seen:
            continue
        gd = g[g["latent_dim"] == d]
        if "seed" in gd.columns:
            gd = gd.sort_values("seed", kind="stable")
        for tid in gd["trial_id"].astype(str):
            if ex.get(tid) is not None:
                seen.add(d)
                out.append((tid, int(d), label))
                break
    return out


def _typed(arr: np.ndarray) -> dict:
    """A float32 array as plotly.js's typed-array spec (base64), compact in the page."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return {
        "dtype": "f4",
        "bdata": base64.b64encode(arr.tobytes()).decode("ascii"),
        "shape": ", ".join(str(n) for n in arr.shape),
    }


def _examples_figure(ctx: _Ctx, v: H.StratumVerdict, picks, n_per_class: int = 3) -> str:
    """One row per test image; columns: input, mask, and reconstruction and anomaly map at
    the small, best and large latent dimension."""
    ex = ctx.run.examples
    entries = {tid: ex.get(tid) or {} for tid, _, _ in picks}
    first = entries[picks[0][0]]
    labels = list(first.get("labels") or [])
    rows_idx = [i for i, y in enumerate(labels) if y == 0][:n_per_class]
    rows_idx += [i for i, y in enumerate(labels) if y == 1][:n_per_class]
    if not rows_idx:
        return ""
    col_specs: list[tuple[str, str, str | None]] = [("input", "inputs", None)]
    if first.get("masks") is not None:
        col_specs.append(("mask", "masks", None))
    for tid, d, label in picks:
        col_specs.append((f"reconstruction<br>d = {d} ({label})", "reconstructions", tid))
        col_specs.append((f"anomaly map<br>d = {d}", "anomaly_maps", tid))
    n_rows, n_cols = len(rows_idx), len(col_specs)
    fig = _Fig(
        n_rows, n_cols, titles=[c[0] for c in col_specs], hspace=0.008, vspace=0.02, title_size=11
    )
    maps = []
    for _, key, tid in col_specs:
        if key == "anomaly_maps":
            arr = entries[tid].get(key) or []
            maps += [np.asarray(arr[i], dtype=np.float32).ravel() for i in rows_idx if i < len(arr)]
    vmax = float(np.nanpercentile(np.concatenate(maps), 99)) if maps else 1.0
    if not math.isfinite(vmax) or vmax <= 0:
        vmax = 1.0
    for c, (clabel, key, tid) in enumerate(col_specs, start=1):
        arr = (entries[tid] if tid is not None else first).get(key) or []
        what = clabel.replace("<br>", ", ")
        for r, i in enumerate(rows_idx, start=1):
            xa, ya = fig.x(r, c), fig.y(r, c)
            xa["visible"] = False
            k = fig._k(r, c)
            ya.update(
                autorange="reversed",
                scaleanchor=f"x{k}" if k > 1 else "x",
                constrain="domain",
                showticklabels=False,
                showgrid=False,
                zeroline=False,
                showline=False,
                ticks="",
            )
            if c == 1:
                kind = "normal" if labels[i] == 0 else "abnormal"
                ya["title"] = dict(text=f"{kind} #{i}", font=dict(size=12))
            img = _image_2d(arr[i]) if i < len(arr) else None
            if img is None:
                continue
            trace = dict(
                type="heatmap",
                z=_typed(img),
                hovertemplate=f"{what}<br>x %{{x}}, y %{{y}}: %{{z:.3f}}<extra></extra>",
            )
            if key == "anomaly_maps":
                trace["coloraxis"] = "coloraxis2"
            elif key == "masks":
                trace.update(colorscale=_scale("gray"), zmin=0, zmax=1, showscale=False)
            else:
                trace["coloraxis"] = "coloraxis"
            fig.add(trace, r, c)
    spec = fig.to_dict(
        height=min(1500, 118 * n_rows + 130),
        title=dict(
            text=f"{_esc(v.stratum)}: test images, reconstructions and anomaly maps", x=0.01
        ),
        coloraxis=dict(colorscale=_scale("gray"), cmin=-1, cmax=1, showscale=False),
        coloraxis2=dict(
            colorscale=_scale("Inferno"),
            cmin=0,
            cmax=vmax,
            colorbar=dict(title=_title("score"), len=0.6, thickness=14),
        ),
        margin=dict(l=80, r=20, t=100, b=10),
    )
    return ctx.page.figure(
        spec,
        "Rows: normal and abnormal test images. Columns: input, mask (when annotated), and "
        "the reconstruction and anomaly map at the smallest, best and largest latent "
        "dimension (first seed).",
    )


def _scores_figure(ctx: _Ctx, strata: list[H.StratumVerdict]) -> str:
    sc = ctx.run.scores
    if sc is None or not {"trial_id", "score", "label"} <= set(sc.columns):
        return _na("Score distributions", ctx.run.notes.get("scores", "no scores table"))
    rows = []
    for v in strata:
        g = ctx.done[ctx.done["_stratum"] == v.stratum]
        if g.empty:
            continue
        dims = sorted(g["latent_dim"].unique())
        picks = dict.fromkeys([dims[0], v.best_latent_dim, dims[-1]])
        rows.append((v, g, [d for d in picks if d is not None]))
    if not rows:
        return ""
    ncol = max(len(p) for _, _, p in rows)
    titles = []
    for v, _, picks in rows:
        titles += [f"{v.stratum}, d = {d}" for d in picks] + [""] * (ncol - len(picks))
    height = 270 * len(rows) + 130
    fig = _Fig(len(rows), ncol, titles=titles, vspace=_vspace(height, len(rows), gap_px=60))
    sc_ids = sc["trial_id"].astype(str)
    for r, (_, g, picks) in enumerate(rows, start=1):
        for c, d in enumerate(picks, start=1):
            ids = set(g.loc[g["latent_dim"] == d, "trial_id"].astype(str))
            s = _subsample(sc[sc_ids.isin(ids)], 4000)
            for lab, name, colour in ((0, "normal", "#2ca02c"), (1, "abnormal", "#d62728")):
                fig.add(
                    dict(
                        type="histogram",
                        x=_arr(s.loc[s["label"] == lab, "score"]),
                        name=name,
                        legendgroup=name,
                        showlegend=r == 1 and c == 1,
                        opacity=0.6,
                        marker=dict(color=colour),
                        nbinsx=40,
                        histnorm="probability density",
                    ),
                    r,
                    c,
                )
            if r == len(rows):
                fig.x(r, c)["title"] = _title("anomaly score")
        fig.y(r, 1)["title"] = _title("density")
    spec = fig.to_dict(
        barmode="overlay",
        height=height,
        title=dict(text="Anomaly scores of normal and abnormal test images", x=0.01),
        legend=LEGEND_BELOW,
        margin=MARGIN_LEGEND_BELOW,
    )
    return ctx.page.figure(spec, "Pooled over seeds; small, best and large latent dimension.")


def _spread(verdicts: list[H.StratumVerdict], k: int) -> list[H.StratumVerdict]:
    """Up to ``k`` strata covering the data sets first: the first model of every data set,
    then the second, and so on (in the order of ``verdicts``)."""
    seen: dict[str, int] = {}
    rank = []
    for i, v in enumerate(verdicts):
        rank.append((seen.get(v.dataset, 0), i))
        seen[v.dataset] = seen.get(v.dataset, 0) + 1
    chosen = sorted(sorted(rank)[:k], key=lambda r: r[1])
    return [verdicts[i] for _, i in chosen]


def _section_examples(ctx: _Ctx) -> None:
    title = "7. Examples"
    parts = []
    shown = _spread(ctx.verdicts, MAX_EXAMPLE_STRATA)
    if ctx.run.examples is None:
        parts.append(_na("Example reconstructions", ctx.run.notes.get("examples", "")))
    else:
        for v in shown:
            picks = _pick_example_trials(ctx, v)
            if picks:
                parts.append(_examples_figure(ctx, v, picks))
        if not any(parts):
            parts.append(_na("Example reconstructions", "no examples for completed trials"))
        elif len(ctx.verdicts) > len(shown):
            names = ", ".join(v.stratum for v in shown)
            parts.append(
                _note(f"Examples of {len(shown)} of {len(ctx.verdicts)} strata ({_esc(names)}).")
            )
    parts.append(_scores_figure(ctx, shown))
    ctx.page.add("examples", title, "\n".join(p for p in parts if p))


def _kv_table(d: dict) -> str:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict):
            inner = ", ".join(f"{_esc(a)}: {_esc(_fmt(b))}" for a, b in v.items())
            rows.append(f"<tr><th>{_esc(k)}</th><td>{inner}</td></tr>")
        elif isinstance(v, list):
            rows.append(f"<tr><th>{_esc(k)}</th><td>{len(v)} entries</td></tr>")
        else:
            rows.append(f"<tr><th>{_esc(k)}</th><td>{_esc(_fmt(v))}</td></tr>")
    return f"<div class='tablewrap'><table class='kv'>{''.join(rows)}</table></div>"


def _seconds(s: float) -> str:
    if not math.isfinite(s):
        return "–"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _section_facts(ctx: _Ctx) -> None:
    title = "8. Run facts"
    run = ctx.run
    parts = []
    t = ctx.all_trials
    if len(t):
        facts = {"trials": len(t)}
        if "status" in t.columns:
            facts.update({f"trials {k}": int(n) for k, n in t["status"].value_counts().items()})
        for col, label in (("elapsed_s", "training time"), ("wall_s", "wall time")):
            if _has_values(t, col):
                x = _finite(t[col]).dropna()
                facts[f"total {label}"] = _seconds(float(x.sum()))
                facts[f"{label} per trial (median / max)"] = (
                    f"{_seconds(float(x.median()))} / {_seconds(float(x.max()))}"
                )
        for col in ("device", "hostname"):
            if col in t.columns and t[col].notna().any():
                vc = t[col].fillna("?").astype(str).value_counts()
                facts[f"{col}s"] = ", ".join(f"{k} ({n})" for k, n in vc.items())
        facts["disk used"] = disk_used_text(run.run_dir)  # models, checkpoints, tables
        parts.append("<h3>Trials and compute</h3>" + _kv_table(facts))
    if run.meta:
        scalars = {k: v for k, v in run.meta.items() if not isinstance(v, (dict, list))}
        nested = {k: v for k, v in run.meta.items() if isinstance(v, dict)}
        parts.append("<h3>meta.json</h3>" + _kv_table({**scalars, **nested}))
        sessions = run.meta.get("sessions")
        if isinstance(sessions, list) and sessions and all(isinstance(s, dict) for s in sessions):
            parts.append("<h3>Sessions</h3>" + _table_html(pd.DataFrame(sessions[-20:])))
    else:
        parts.append(_na("Run metadata", run.notes.get("meta", "")))
    if run.space_text:
        parts.append(
            f"<h3>Resolved search space (space.yaml)</h3><pre>{_esc(run.space_text)}</pre>"
        )
    else:
        parts.append(_na("Resolved search space", run.notes.get("space", "")))
    ctx.page.add("facts", title, "\n".join(parts))


CSS = """
:root { --ink:#1d2330; --muted:#667085; --line:#e3e6ec; --bg:#f6f7fb; --accent:#0072B2; }
* { box-sizing: border-box; }
body { margin:0; font-family: Inter, "Helvetica Neue", Arial, sans-serif; color:var(--ink);
  background:var(--bg); line-height:1.5; font-size:15px; }
header.top { background:linear-gradient(120deg,#0b2545,#134074); color:white;
  padding:28px 40px 22px; }
header.top h1 { margin:0 0 6px; font-size:28px; font-weight:650; letter-spacing:-0.01em; }
header.top p { margin:2px 0; color:#d6e2f0; }
nav.toc { position:sticky; top:0; z-index:10; background:white; border-bottom:1px solid
  var(--line); padding:8px 40px; display:flex; flex-wrap:wrap; gap:6px 18px; font-size:14px; }
nav.toc a { color:var(--accent); text-decoration:none; }
nav.toc a:hover { text-decoration:underline; }
main { max-width:1280px; margin:0 auto; padding:10px 28px 60px; }
section { background:white; border:1px solid var(--line); border-radius:12px;
  padding:18px 26px 22px; margin:22px 0; box-shadow:0 1px 3px rgba(16,24,40,.05); }
section > h2 { margin:0 0 12px; font-size:22px; font-weight:650; }
h3 { font-size:17px; margin:20px 0 8px; }
.banner { background:#fff4d6; border:1px solid #f0c36d; color:#6b4c00; border-radius:10px;
  padding:12px 18px; margin:18px 0 0; font-weight:600; }
.card { border:1px solid var(--line); border-left:6px solid var(--accent); border-radius:10px;
  padding:12px 18px; margin:14px 0; background:#fcfcfd; }
.card h3 { margin:4px 0 6px; display:inline-flex; align-items:center; gap:10px; }
details.card > summary { cursor:pointer; list-style-position:outside; }
.small { font-size:12.5px; color:var(--muted); }
table.glance td { min-width:90px; }
.badge { white-space:nowrap; }
.headline { font-size:16px; font-weight:600; margin:4px 0; }
.best { margin:4px 0; }
.summary { color:var(--muted); font-size:13.5px; margin:6px 0 10px; }
.muted { color:var(--muted); font-weight:400; }
.lead { font-size:15.5px; }
.badge { display:inline-block; padding:2px 10px; border-radius:999px; font-size:12.5px;
  font-weight:650; text-transform:uppercase; letter-spacing:.04em; color:white; }
.badge.supported { background:#1a7f37; } .badge.contradicted { background:#c62828; }
.badge.not-shown { background:#8a8f98; }
.badge.not-tested { background:white; color:var(--muted); border:1px solid #c5cad3; }
.tablewrap { overflow-x:auto; margin:8px 0 4px; }
table.data, table.kv { border-collapse:collapse; font-size:13.5px; min-width:40%; }
table.data th, table.data td, table.kv th, table.kv td { border-bottom:1px solid var(--line);
  padding:5px 10px; text-align:left; vertical-align:top; }
table.data thead th { background:#eef2f7; font-weight:600; white-space:nowrap; }
table.data tbody tr:nth-child(even) { background:#fafbfc; }
table.data td.num { text-align:right; white-space:nowrap; font-variant-numeric:tabular-nums; }
table.data tr.paper td { color:#7a7f87; font-style:italic; background:#f4f4f6; }
table.data td.reason { color:var(--muted); font-size:12.5px; }
table.kv th { width:260px; color:var(--muted); font-weight:500; }
figure.fig { margin:10px 0 18px; }
figcaption { color:var(--muted); font-size:13px; margin:4px 6px 0; }
p.note { color:var(--muted); font-style:italic; }
pre { background:#0f172a; color:#e2e8f0; padding:14px 18px; border-radius:8px;
  overflow-x:auto; font-size:12.5px; line-height:1.45; }
code { background:#eef2f7; padding:1px 5px; border-radius:4px; font-size:13px; }
footer { text-align:center; color:var(--muted); font-size:12.5px; padding:10px 0 30px; }
"""


def render_report(run: RunData, **options: Any) -> tuple[str, int]:
    """The report's HTML and its number of figures (options as :func:`_render`)."""
    doc, n_figures, _ctx = _render(run, **options)
    return doc, n_figures


def _render(
    run: RunData,
    *,
    entropy_col: str = "latent_entropy_gaussian",
    max_curves: int = 240,
    n_boot: int = 2000,
    n_sim: int = 10000,
    alpha: float = 0.05,
    validate: bool = False,
) -> tuple[str, int, _Ctx]:
    """The report's HTML, its number of figures and its context (verdicts, tests).
    ``alpha`` is the level of the verdicts; ``n_sim`` the null draws of the max-t tests
    (and permutations of the fixed-latent_dim test); ``validate=True`` checks every figure
    against Plotly's schema (slower; for tests)."""
    page = _Page(validate=validate)
    trials = run.trials if run.trials is not None else pd.DataFrame()
    all_trials = trials.copy()
    if "trial_id" not in all_trials.columns:
        all_trials["trial_id"] = [f"row-{i}" for i in range(len(all_trials))]
    if {"dataset", "model"} <= set(all_trials.columns):
        all_trials["_stratum"] = _stratum_series(all_trials)
    else:
        all_trials["_stratum"] = pd.Series(dtype=str)
    done = all_trials
    if "status" in done.columns:
        done = done[done["status"] == "completed"]
    if {"latent_dim", "auc", "dataset", "model"} <= set(done.columns):
        d = pd.to_numeric(done["latent_dim"], errors="coerce")
        done = done[d > 0].copy()
        done["latent_dim"] = d[d > 0].round().astype(int)
    else:
        done = done.iloc[:0]
    verdict_list, fixed = _hypothesis_tests(run, all_trials, entropy_col, alpha, n_boot, n_sim)
    datasets = list(dict.fromkeys(done["dataset"].astype(str))) if len(done) else []
    models = list(dict.fromkeys(done["model"].astype(str))) if len(done) else []
    colours = {ds: DATASET_COLOURS[i % len(DATASET_COLOURS)] for i, ds in enumerate(datasets)}
    order = [v.stratum for v in verdict_list]
    ctx = _Ctx(
        summary=_summaries(done, order),
        hover=_hover_text(done),
        run=run,
        done=done,
        all_trials=all_trials,
        verdicts=verdict_list,
        colours=colours,
        model_index={m: i for i, m in enumerate(models)},
        entropy_col=entropy_col,
        max_curves=max_curves,
        page=page,
        fixed=fixed,
    )
    try:
        t1, t2 = _paper_tables()
        t1["_norm"] = t1["dataset"].map(_norm_label)
        t2["_norm"] = t2["dataset"].map(_norm_label)
    except (OSError, ValueError):
        t1 = t2 = None
    for anchor, title, build in (
        ("verdicts", "Verdicts", _section_verdicts),
        ("fixed", "Entropy at fixed latent dimension", _section_fixed_dim),
        ("detection", "1. Detection vs latent dimension", lambda c: _section_detection(c, t1)),
        ("entropy", "2. Latent entropy vs AUC", _section_entropy),
        ("recon", "3. Reconstruction error vs latent dimension", _section_recon),
        ("pixel", "4. Pixel-level segmentation vs latent dimension", _section_pixel),
        ("methods", "5. Methods comparison", lambda c: _section_methods(c, t2)),
        ("search", "6. Search diagnostics", _section_search),
        ("examples", "7. Examples", _section_examples),
        ("facts", "8. Run facts", _section_facts),
    ):
        n_sections = len(page.sections)
        try:
            build(ctx)
        except Exception as exc:  # noqa: BLE001 - one odd table must not cost the whole report
            if validate:
                raise
            del page.sections[n_sections:]
            page.add(
                anchor, title, _note(f"{SECTION_FAILED}: {_esc(type(exc).__name__)}: {_esc(exc)}")
            )

    meta = run.meta or {}
    partial = _partial_reasons(run)
    banner = (
        f"<div class='banner'>⚠ Partial results: {'; '.join(partial)}. Numbers will change "
        "as trials finish.</div>"
        if partial
        else ""
    ) + _test_metric_note(run)
    desc = (run.space or {}).get("description") or ""
    status = meta.get("status", "unknown")
    when = " · ".join(
        f"{k.replace('_', ' ')} {_esc(meta[k])}"
        for k in ("started_at", "finished_at")
        if meta.get(k)
    )
    n_done = len(done)
    n_all = len(all_trials)
    n_strata = len(_planned_strata(run, all_trials))
    toc = "".join(f"<a href='#{a}'>{_esc(t)}</a>" for a, t, _ in page.sections)
    sections = "\n".join(
        f"<section id='{a}'><h2>{_esc(t)}</h2>\n{body}\n</section>" for a, t, body in page.sections
    )
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="ae4ad-figures" content="{page.n_figures}">
<title>ae4ad study report: {_esc(run.name)}</title>
<style>{CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<header class="top"><h1>Latent entropy and anomaly detection: {_esc(run.name)}</h1>
<p>{_esc(desc)}</p>
<p>status: <b>{_esc(status)}</b> · {n_done} completed of {n_all} trials · {n_strata}
strat{"um" if n_strata == 1 else "a"}{(" · " + when) if when else ""}</p></header>
<nav class="toc">{toc}</nav>
<main>{banner}
{sections}
</main>
<footer>ae4ad-study report · {_esc(run.run_dir.name)} · generated
{time.strftime("%Y-%m-%d %H:%M:%S")}</footer>
</body></html>
"""
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
    if entropy_col not in ENTROPY_LABELS:
        raise ValueError(
            f"entropy_col: unknown latent statistic {entropy_col!r}; allowed: "
            f"{', '.join(ENTROPY_LABELS)}"
        )
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a number in (0, 1), got {alpha!r}")
    run = load_run(run_dir)
    doc, _, ctx = _render(
        run, entropy_col=entropy_col, max_curves=max_curves, n_boot=n_boot, n_sim=n_sim,
        alpha=alpha,
    )  # fmt: skip
    out = run.run_dir / REPORT_FILE
    _atomic_write(out, doc)
    table = H.verdicts_table(ctx.verdicts, ctx.fixed, alpha)
    _atomic_write(run.run_dir / VERDICTS_FILE, table.to_csv(index=False))
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
        if r["verdict"] == H.NOT_TESTED:
            lines.append(f"verdict {r['stratum']}: not tested ({r['reason']})")
            continue
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
        lines.append(
            f"verdict {r['stratum']}: {r['verdict']} ({r['test']}, {p}, alpha "
            f"{float(r['alpha']):g}{effect})"
        )
    return lines


# ----------------------------------------------------------------------------- synthetic runs


def _peak_for(dims: Sequence[int], i: int) -> int:
    return int(dims[min(len(dims) - 1, 2 + (i % max(1, len(dims) - 3)))])


def make_synthetic_run(
    run_dir: Path | str,
    *,
    datasets: Sequence[str] = ("phantom-k6", "RSNA"),
    models: Sequence[str] = ("ae",),
    latent_dims: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128),
    seeds: Iterable[int] = (0, 1, 2),
    status: str = "finished",
    epochs: int = 50,
    eval_every: int = 10,
    n_test: int = 60,
    image_size: int = 32,
    masks: bool = True,
    history: bool = True,
    scores: bool = True,
    examples: bool = True,
    optuna_db: bool = False,
    extra_statuses: dict[str, int] | None = None,
    seed: int = 0,
) -> Path:
    """Write a synthetic run folder with the harness's tables, for demos, tests and
    benchmarks: AUC is an inverted U in log2(latent_dim) peaking at a data-set-specific
    d*, latent entropy grows with latent_dim, reconstruction errors fall with it.

    ``extra_statuses`` adds trials with other statuses, e.g. ``{"early-stopped": 3}``.
    Returns ``run_dir``.
    """
    rng = np.random.default_rng(seed)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seeds = list(seeds)
    dims = sorted(int(d) for d in latent_dims)
    name = run_dir.name
    trials, hist, score_rows, ex = [], [], [], {}
    n_half = n_test // 2
    yy, xx = np.mgrid[0:image_size, 0:image_size] / image_size
    for i, ds in enumerate(datasets):
        peak = _peak_for(dims, i)
        intrinsic = peak * 0.7 + 0.3
        with_masks = masks and i == len(datasets) - 1
        for k, model in enumerate(models):
            for d in dims:
                for s in seeds:
                    tid = f"{i}{k}{d:04d}{s:03d}"
                    gap = math.log2(d) - math.log2(peak)
                    auc = 0.92 - 0.035 * k - 0.03 * gap**2 * (0.6 if gap > 0 else 1.4)
                    auc = float(np.clip(auc + 0.008 * rng.standard_normal(), 0.3, 0.999))
                    ap = float(np.clip(auc - 0.04 + 0.01 * rng.standard_normal(), 0.2, 0.999))
                    ent = 1.4 * math.log(d) + 3 * (1 - math.exp(-d / 16)) + 0.1 * rng.normal()
                    err_n = 0.01 + 0.2 / (1 + (d / peak) ** 1.6) + 0.002 * rng.random()
                    err_a = err_n * (1.2 + 1.6 / (1 + (d / (4 * peak)) ** 1.2))
                    row = dict(
                        study=name,
                        trial_id=tid,
                        status="completed",
                        error=None,
                        dataset=ds,
                        dataset_source="phantom",
                        model=model,
                        model_name=model,
                        latent_dim=d,
                        hidden_dim=1024,
                        base_width=32,
                        epochs=epochs,
                        batch_size=64,
                        lr=1e-3,
                        weight_decay=0.0,
                        eval_every=eval_every,
                        score="l2",
                        seed=s,
                        stratum=f"{ds}/{model}",
                        auc=auc,
                        ap=ap,
                        pixel_ap=float(0.3 + 0.1 * auc * rng.random()) if with_masks else None,
                        best_dice=float(0.35 + 0.1 * auc * rng.random()) if with_masks else None,
                        recon_error_train_normal=err_n * 0.9,
                        recon_error_val_normal=err_n * 1.02,
                        recon_error_test_normal=err_n,
                        recon_error_test_abnormal=err_a,
                        latent_entropy_gaussian=ent,
                        latent_entropy_knn=ent * 0.9 + 0.2 * rng.normal(),
                        latent_effective_rank=min(d, peak * 1.5) * (0.8 + 0.1 * rng.random()),
                        latent_participation_ratio=min(d, peak) * (0.6 + 0.1 * rng.random()),
                        latent_intrinsic_dim=min(d, intrinsic) * (0.9 + 0.1 * rng.random()),
                        image_intrinsic_dim_twonn=intrinsic + 0.2 * rng.normal(),
                        image_intrinsic_dim_mle=intrinsic * 1.1,
                        mean_score_normal=err_n,
                        mean_score_abnormal=err_a,
                        best_auc=auc + 0.005,
                        best_ap=ap + 0.005,
                        epochs_done=epochs,
                        elapsed_s=float(30 + d * 0.2 + 5 * rng.random()),
                        wall_s=float(35 + d * 0.2 + 5 * rng.random()),
                        device="cuda:0" if s % 2 == 0 else "cpu",
                        hostname="node-1",
                        node_ip="10.0.0.1",
                    )
                    trials.append(row)
                    if history:
                        for e in range(eval_every, epochs + 1, eval_every):
                            frac = e / epochs
                            hist.append(
                                dict(
                                    trial_id=tid,
                                    dataset=ds,
                                    model=model,
                                    latent_dim=d,
                                    seed=s,
                                    epoch=e,
                                    status="running" if e < epochs else "completed",
                                    auc=0.5 + (auc - 0.5) * (1 - math.exp(-4 * frac)),
                                    ap=0.5 + (ap - 0.5) * (1 - math.exp(-4 * frac)),
                                    train_loss=err_n * (1 + 2 * math.exp(-4 * frac)),
                                )
                            )
                    if scores:
                        # equal-variance normal scores: AUC = Phi(sep / sqrt(2))
                        sep = math.sqrt(2) * NormalDist().inv_cdf(min(auc, 0.999))
                        sc = np.concatenate([rng.normal(0, 1, n_half), rng.normal(sep, 1, n_half)])
                        lab = np.repeat([0, 1], n_half)
                        for j in range(n_test // 2 * 2):
                            score_rows.append((tid, ds, model, d, s, j, float(sc[j]), int(lab[j])))
                    if examples and s == seeds[0]:
                        ex[tid] = _synthetic_examples(rng, xx, yy, d, peak, with_masks)
    extra = extra_statuses or {}
    for st, count in extra.items():
        for j in range(count):
            base = dict(trials[j % len(trials)])
            base.update(
                trial_id=f"x{st[:2]}{j:04d}",
                status=st,
                auc=math.nan,
                ap=math.nan,
                epochs_done=eval_every,
                best_auc=0.6,
                error="RuntimeError: CUDA out of memory" if st == "errored" else None,
            )
            trials.append(base)
    _atomic_frame(run_dir / "trials.parquet", pd.DataFrame(trials))
    if history:
        _atomic_frame(run_dir / "history.parquet", pd.DataFrame(hist))
    if scores:
        cols = ["trial_id", "dataset", "model", "latent_dim", "seed", "index", "score", "label"]
        _atomic_frame(run_dir / "scores.parquet", pd.DataFrame(score_rows, columns=cols))
    if examples:
        _atomic_write(run_dir / "examples.json", json.dumps(ex, separators=(",", ":")))
    space = dict(
        name=name,
        description="Synthetic run: an inverted U of AUC over latent_dim.",
        storage_path=str(run_dir.parent),
        datasets=[
            dict(name="phantom", label=ds, params=dict(image_size=image_size)) for ds in datasets
        ],
        models=[
            dict(name=m, label=m, params=dict(latent_dim=dims, hidden_dim=1024)) for m in models
        ],
        training=dict(epochs=epochs, lr=1e-3, eval_every=eval_every),
        seeds=seeds,
        search=dict(type="optuna" if optuna_db else "grid"),
    )
    _atomic_write(run_dir / "space.yaml", yaml.safe_dump(space, sort_keys=False))
    meta = dict(
        status=status,
        created_at="2024-01-01T00:00:00+00:00",
        started_at="2024-01-01T00:00:00+00:00",
        finished_at=None if status != "finished" else "2024-01-01T02:00:00+00:00",
        hostname="node-1",
        python="3.11",
        git=dict(commit="0" * 40, dirty=False),
        packages=dict(torch="2.13", ray="2.60", optuna="5.0", plotly="7.1", pandas="3.1"),
        sessions=[dict(started_at="2024-01-01T00:00:00+00:00", trials=len(trials))],
    )
    _atomic_write(run_dir / "meta.json", json.dumps(meta, indent=2))
    if optuna_db:
        _synthetic_optuna(run_dir / "optuna.db", pd.DataFrame(trials))
    return run_dir


def _synthetic_examples(rng, xx, yy, d, peak, with_masks, n=3) -> dict:
    inputs, recons, maps, masks, labels = [], [], [], [], []
    blur = min(1.0, d / (2 * peak))
    for j in range(2 * n):
        abnormal = j >= n
        cx, cy = 0.3 + 0.4 * rng.random(), 0.3 + 0.4 * rng.random()
        img = np.sin(6 * xx + j) * np.cos(5 * yy) * 0.6
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < 0.012).astype(np.float32) if abnormal else 0 * xx
        x = np.clip(img + 0.9 * mask, -1, 1)
        rec = np.clip(img * (0.6 + 0.4 * blur) + 0.9 * mask * blur**2, -1, 1)
        inputs.append(x[None])
        recons.append(rec[None])
        maps.append(((x - rec) ** 2)[None])
        masks.append(mask[None])
        labels.append(int(abnormal))
    r = lambda a: np.round(np.asarray(a, dtype=np.float32), 3).tolist()  # noqa: E731
    return dict(
        index=list(range(2 * n)),
        labels=labels,
        inputs=r(inputs),
        reconstructions=r(recons),
        anomaly_maps=r(maps),
        masks=r(masks) if with_masks else None,
    )


def _synthetic_optuna(path: Path, trials: pd.DataFrame) -> None:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{path.resolve()}"
    done = trials[trials["status"] == "completed"]
    for stratum, g in done.groupby("stratum", sort=False):
        study = optuna.create_study(
            study_name=str(stratum), storage=url, direction="maximize", load_if_exists=True
        )
        dims = sorted(int(d) for d in g["latent_dim"].unique())
        dist = {
            "model.latent_dim": CategoricalDistribution(dims),
            "training.lr": FloatDistribution(1e-4, 1e-2, log=True),
        }
        rng = np.random.default_rng(0)
        study.add_trials(
            [
                optuna.trial.create_trial(
                    params={
                        "model.latent_dim": int(r.latent_dim),
                        "training.lr": float(10 ** rng.uniform(-4, -2)),
                    },
                    distributions=dist,
                    value=float(r.auc),
                )
                for r in g.itertuples()
            ]
        )


def _atomic_frame(path: Path, df: pd.DataFrame) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m study.report RUN_DIR [--demo] [--entropy COL]``."""
    p = argparse.ArgumentParser(prog="python -m study.report", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path, help="runs/<study name>/")
    p.add_argument("--demo", action="store_true", help="first write a synthetic run there")
    p.add_argument("--entropy", default="latent_entropy_gaussian", choices=list(ENTROPY_LABELS))
    args = p.parse_args(argv)
    if args.demo:
        make_synthetic_run(args.run_dir, extra_statuses={"early-stopped": 3, "errored": 1})
    try:
        started = time.perf_counter()
        out = write_report(args.run_dir, entropy_col=args.entropy)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = out.stat().st_size / 1e6
    print(f"wrote {out} ({size:.1f} MB, {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
