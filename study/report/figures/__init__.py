"""The report's figures by name: one builder per figure, used by the HTML report's
sections and by notebooks (``study.load_run(run_dir).figure(name)``) alike.

A builder takes the report's context and returns a :class:`~study.report.figures.grid.Plot`
(plain dicts, fast to embed), ``None`` when there is nothing to draw, or raises
:class:`~study.report.figures.grid.NotAvailable` saying what is missing.
:func:`~study.report.figures.grid.to_figure` turns a Plot into a
``plotly.graph_objects.Figure``.
"""

from __future__ import annotations

from collections.abc import Callable

from study.report.context import Ctx
from study.report.figures import curves, examples, known, learning, search
from study.report.figures.grid import NotAvailable, Plot, to_figure

__all__ = ["EXAMPLES", "FIGURES", "NotAvailable", "Plot", "build", "names", "to_figure"]

EXAMPLES = "examples:"  # "examples:<stratum>": the example reconstructions of a stratum

# in the order of the page
FIGURES: dict[str, Callable[[Ctx], Plot | None]] = {
    "known_answer": known.known_answer,
    "auc_vs_latent_dim": curves.detection,
    "entropy_vs_auc": curves.entropy,
    "recon_error_vs_latent_dim": curves.recon,
    "pixel_metrics_vs_latent_dim": curves.pixel,
    "optuna_history": search.history,
    "objective_vs_latent_dim": search.latent_dependence,
    "learning_curves": learning.learning_curves,
    "score_distributions": examples.scores,
}


def build(ctx: Ctx, name: str) -> Plot | None:
    """The figure ``name`` (built once per context). Raises ``KeyError`` for an unknown
    name and :class:`NotAvailable` when the run's tables cannot give it."""
    key = ("figure", name)
    if key not in ctx.cache:
        try:
            ctx.cache[key] = _builder(name)(ctx)
        except NotAvailable as exc:
            ctx.cache[key] = exc
    found = ctx.cache[key]
    if isinstance(found, NotAvailable):
        raise found
    return found


def _builder(name: str) -> Callable[[Ctx], Plot | None]:
    if name.startswith(EXAMPLES):
        stratum = name[len(EXAMPLES) :]
        return lambda ctx: examples.examples(ctx, stratum)
    if name not in FIGURES:
        raise KeyError(
            f"unknown figure {name!r}; the report's figures are {', '.join(FIGURES)} and "
            f"{EXAMPLES}<stratum>"
        )
    return FIGURES[name]


def names(ctx: Ctx) -> list[str]:
    """The names of the figures the report of this run draws, in the page's order."""
    candidates = list(FIGURES)
    at = candidates.index("score_distributions")
    candidates[at:at] = [EXAMPLES + v.stratum for v in examples.shown_strata(ctx)]
    out = []
    for name in candidates:
        try:
            if build(ctx, name) is not None:
                out.append(name)
        except NotAvailable:
            continue
    return out
