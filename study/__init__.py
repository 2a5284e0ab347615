"""The study harness: a YAML search space -> Ray Tune (+ Optuna) trials -> result tables
-> hypothesis statistics -> a Plotly report.

Importing the package is cheap: each part lives in its own module and is imported where
it is used (Ray only in the runner), e.g.

>>> from study.space import load_space
>>> load_space("smoke").name
'smoke'
"""

__all__ = ["cli", "hypothesis", "report", "results", "runner", "searcher", "space"]
