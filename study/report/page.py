"""The page: a Jinja2 template (page.html, autoescaped) with the style sheet (page.css),
plotly.js once in the head, a header with the run's status, a table of contents, the
banners and the sections; every figure is one Plotly div."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from importlib import resources

import jinja2
import plotly.io as pio
from markupsafe import Markup
from plotly.offline import get_plotlyjs

from ae4ad.metrics import METRICS
from study.report.figures import Plot, to_figure
from study.report.figures.style import PLOT_CONFIG, TEMPLATE_JSON
from study.report.load import RunData
from study.results import FINISHED_STATUSES

PACKAGE = "study.report"


@dataclass
class Section:
    anchor: str
    title: str
    body: str  # HTML


class Page:
    """Collects the sections and numbers the figures of one report."""

    def __init__(self, validate: bool = False) -> None:
        self.sections: list[Section] = []
        self.n_figures = 0
        self.validate = validate

    def figure(self, plot: Plot) -> str:
        """The figure's div with its caption. With ``validate`` the figure is checked
        against Plotly's schema first (raises ``ValueError`` naming any invalid property)."""
        self.n_figures += 1
        if self.validate:
            to_figure(plot)
        spec = {"data": plot.data, "layout": {**plot.layout, "template": TEMPLATE_JSON}}
        div = pio.to_html(
            spec,
            full_html=False,
            include_plotlyjs=False,
            div_id=f"figure-{self.n_figures}",
            config=PLOT_CONFIG,
            default_width="100%",
            validate=False,
        )
        cap = f"<figcaption>{plot.caption}</figcaption>" if plot.caption else ""
        return f'<figure class="fig">{div}{cap}</figure>'

    def add(self, anchor: str, title: str, body: str) -> None:
        self.sections.append(Section(anchor, title, body))

    def render(self, run: RunData, n_done: int, n_all: int, n_strata: int) -> str:
        """The whole HTML document."""
        meta = run.meta or {}
        return template("page.html").render(
            n_figures=self.n_figures,
            name=run.name,
            css=Markup(_package_text("page.css")),
            plotly_js=Markup(get_plotlyjs()),
            description=(run.space or {}).get("description") or "",
            status=meta.get("status", "unknown"),
            n_done=n_done,
            n_all=n_all,
            n_strata=n_strata,
            when=[
                (k.replace("_", " "), meta[k]) for k in ("started_at", "finished_at") if meta.get(k)
            ],
            sections=[Section(s.anchor, s.title, Markup(s.body)) for s in self.sections],
            partial=partial_reasons(run),
            selected_on_test=selected_on_test(run),
            folder=run.run_dir.name,
            generated=time.strftime("%Y-%m-%d %H:%M:%S"),
        )


@functools.cache
def _package_text(name: str) -> str:
    return (resources.files(PACKAGE) / name).read_text(encoding="utf-8")


@functools.cache
def template(name: str) -> jinja2.Template:
    """A template file of this package (autoescaped)."""
    env = jinja2.Environment(
        autoescape=True, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True
    )
    return env.from_string(_package_text(name))


def partial_reasons(run: RunData) -> list[str]:
    """Why the results are partial: the study is still running or was interrupted, or
    some trials have not finished."""
    reasons = []
    status = (run.meta or {}).get("status")
    if status in ("running", "interrupted"):
        reasons.append(f"the study's status is “{status}” (meta.json)")
    t = run.trials
    if t is not None and "status" in t.columns:
        unfinished = int((~t["status"].isin(FINISHED_STATUSES)).sum())
        if unfinished:
            reasons.append(f"{unfinished} of {len(t)} trials have not finished")
    return reasons


def selected_on_test(run: RunData) -> dict | None:
    """``{"what", "metric"}`` when the search or early stopping optimised a test-set
    metric (the banner says the best values are optimistic), else None."""
    space = run.space or {}
    search = (space.get("search") or {}).get("type", "grid")
    sched = space.get("scheduler") or {}
    metric = str(sched.get("metric", "auc"))
    stopping = sched.get("type", "none") != "none"
    if not (search == "optuna" or stopping) or not is_test_metric(metric):
        return None
    what = " and ".join(
        w for w, on in (("the search", search == "optuna"), ("early stopping", stopping)) if on
    )
    return {"what": what, "metric": metric}


def is_test_metric(metric: str) -> bool:
    """Whether optimising ``metric`` selects on test data: its registry entry is measured
    on the test split (:attr:`ae4ad.metrics.Metric.on_test`); an unregistered name is
    assumed to be.

    >>> is_test_metric("auc"), is_test_metric("val_auc"), is_test_metric("train_loss")
    (True, False, False)
    """
    known = METRICS.get(metric)
    return known is None or known.on_test
