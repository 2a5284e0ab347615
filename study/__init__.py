"""The study harness: a YAML search space -> Ray Tune (+ Optuna) trials -> result tables
-> hypothesis statistics -> a Plotly report.

Importing the package is cheap: each part lives in its own module and is imported where
it is used (Ray only in the runner), e.g.

>>> from study.space import load_space
>>> load_space("smoke").name
'smoke'

``study.load_run(run_dir)`` opens a finished (or running) run folder in a notebook: its
tables as DataFrames, its verdicts and the report's figures (:mod:`study.report.notebook`);
``study.compare(run_dirs)`` puts two or more runs side by side (:mod:`study.report.compare`).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "cli",
    "compare",
    "hypothesis",
    "load_run",
    "report",
    "results",
    "runner",
    "searcher",
    "space",
]


def __getattr__(name: str) -> Any:
    if name == "load_run":  # imported on first use: plotly and pandas are not cheap
        from study.report.notebook import load_run

        return load_run
    if name == "compare":
        from study.report.compare import compare

        return compare
    raise AttributeError(f"module 'study' has no attribute {name!r}")
