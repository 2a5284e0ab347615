"""A run folder for notebooks: its tables as DataFrames, its verdicts and every figure of
its report as a ``plotly.graph_objects.Figure``, built by the report's own code.

Example:
    >>> import study
    >>> run = study.load_run("runs/latent")                       # doctest: +SKIP
    >>> run.trials.groupby("latent_dim")["auc"].mean()            # doctest: +SKIP
    >>> [v.verdict for v in run.verdicts()]                       # doctest: +SKIP
    ['supported']
    >>> run.figures()                                             # doctest: +SKIP
    ['auc_vs_latent_dim', 'entropy_vs_auc', ...]
    >>> run.figure("auc_vs_latent_dim").show()                    # doctest: +SKIP
    >>> [i.text() for i in study.load_run("runs/optuna").importance()]  # doctest: +SKIP
    ['fANOVA over 9 completed trial(s): model.latent_dim 0.71, training.lr 0.18, ...', ...]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from study import hypothesis as H
from study.report import figures
from study.report.context import Ctx, Options, build_context
from study.report.load import RunData, read_run
from study.report.searched import (
    Importance,
    StratumSearch,
    check_evaluator,
    load_studies,
    search_summary,
)


@dataclass
class Run(RunData):
    """The tables of a run folder (``trials``, ``history``, ``scores``: pandas DataFrames,
    None when missing, with the reason in ``notes``), its ``space`` (space.yaml as a dict)
    and ``meta`` (meta.json), with the report's verdicts and figures.

    Each method takes the report's options (``entropy_col``, ``alpha``, ``n_sim``,
    ``n_boot``, ``max_curves``; the defaults of :func:`study.report.write_report`); the
    statistics are computed once per set of options.
    """

    _contexts: dict[Options, Ctx] = field(default_factory=dict, repr=False)
    _found: dict[tuple, list[StratumSearch]] = field(default_factory=dict, repr=False)

    def context(self, **options: Any) -> Ctx:
        """What the report's sections and figures are drawn from (verdicts included)."""
        key = Options(**options).check()
        if key not in self._contexts:
            self._contexts[key] = build_context(self, key)
        return self._contexts[key]

    def verdicts(self, **options: Any) -> list[H.StratumVerdict]:
        """The verdict of every stratum, as the report shows them
        (:class:`study.hypothesis.StratumVerdict`)."""
        return self.context(**options).verdicts

    def metric_verdicts(self, **options: Any) -> list[H.StratumVerdict]:
        """A capacity verdict per stratum x metric (image AUC and AP; pixel AP and best
        Dice where masks exist), Holm over all of them (``H.verdicts_by_metric``)."""
        return self.context(**options).by_metric

    def fixed_latent_dim_tests(self, **options: Any) -> list[H.FixedDimTest]:
        """The report's tests of entropy at fixed latent_dim, one per data set."""
        return self.context(**options).fixed

    def search(self, evaluator: str = "fanova") -> list[StratumSearch]:
        """What the Optuna search found per stratum: trial counts, the best completed
        trial (objective and test AUC) and the parameter importances; empty for a grid
        search (:mod:`study.report.searched`)."""
        if self.optuna_db is None:
            return []
        key = ("search", evaluator)
        if key not in self._found:
            studies, _ = load_studies(self)
            self._found[key] = search_summary(self, studies, evaluator)
        return self._found[key]

    def importance(self, evaluator: str = "fanova") -> list[Importance]:
        """Per stratum of a searched run, the importance of each searched parameter for
        the objective over the completed trials (``evaluator``: fanova, ped-anova or
        mean-decrease-impurity); ``not available`` (empty, with the reason) below
        :data:`~study.report.searched.MIN_IMPORTANCE_TRIALS` completed trials. Raises
        ``ValueError`` for an unknown evaluator; empty for a grid search."""
        check_evaluator(evaluator)
        return [s.importance for s in self.search(evaluator)]

    def figures(self, **options: Any) -> list[str]:
        """The names of the figures the report of this run draws, in page order (each is
        built once to find out)."""
        return figures.names(self.context(**options))

    def figure(self, name: str, **options: Any) -> go.Figure:
        """The report's figure ``name`` (see :meth:`figures`) as a Plotly figure.

        Raises ``KeyError`` for an unknown name and ``LookupError`` when the run's tables
        cannot give the figure (the message says why).
        """
        plot = figures.build(self.context(**options), name)
        if plot is None:
            raise LookupError(f"{name}: nothing to draw for this run")
        return figures.to_figure(plot)


def load_run(run_dir: Path | str) -> Run:
    """The tables of ``run_dir`` (``runs/<study name>/``) with the report's verdicts and
    figures; see :class:`Run`. Raises ``FileNotFoundError`` when it is not a folder."""
    return read_run(run_dir, cls=Run)
