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

Where things live: ``load`` reads a run folder; ``context`` computes what every section
reads (verdicts, summaries); ``figures/`` builds each figure by name (for the page and for
notebooks); ``sections/`` writes one section each; ``page`` puts them into the Jinja2
template ``page.html`` with ``page.css``; ``write`` renders and writes; ``notebook`` is
:func:`load_run`, the run with its verdicts and figures for notebooks.

Example:
    >>> run = load_run("runs/latent")                              # doctest: +SKIP
    >>> run.figure("auc_vs_latent_dim")                            # doctest: +SKIP
    >>> write_report("runs/latent")                                # doctest: +SKIP
    PosixPath('runs/latent/report.html')

Command line: ``python -m study.report RUN_DIR`` (re)writes the report of a run.
"""

from __future__ import annotations

from study.report.figures.style import ENTROPY_LABELS
from study.report.load import RunData
from study.report.notebook import Run, load_run
from study.report.write import (
    REPORT_FILE,
    VERDICTS_FILE,
    render_report,
    verdict_lines,
    write_report,
)

__all__ = [
    "ENTROPY_LABELS",
    "REPORT_FILE",
    "VERDICTS_FILE",
    "Run",
    "RunData",
    "load_run",
    "render_report",
    "verdict_lines",
    "write_report",
]
