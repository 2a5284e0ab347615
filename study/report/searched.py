"""What an Optuna search found, per stratum: the studies of a run's optuna.db, every
trial as a point (completed, early-stopped, failed), the best completed configuration
with its objective and its test AUC, and the importance of each searched parameter for
the objective (Optuna's importance evaluators, fANOVA by default).

Example:
    >>> import study
    >>> run = study.load_run("runs/optuna")                        # doctest: +SKIP
    >>> [(i.stratum, i.evaluator, i.n_completed, i.importances) for i in run.importance()]
    ... # doctest: +SKIP
    [('phantom-k3/ae', 'fANOVA', 9, {'model.latent_dim': 0.71, 'training.lr': 0.18, ...})]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from study.report.figures.style import MAX_PANELS, METRIC_LABELS
from study.report.fragments import NOT_AVAILABLE
from study.report.load import RunData, read_run
from study.report.values import fmt

LATENT_PARAM = "model.latent_dim"  # the Optuna parameter name of latent_dim
MIN_IMPORTANCE_TRIALS = 8
"""Completed trials below which importances are ``not available``. Measured on synthetic
studies of the four parameters ``optuna.yaml`` searches, of which only latent_dim moves
the objective (noise sd 0.01 AUC, 40 studies per size): fANOVA ranks latent_dim first in
30 % of them with 3-4 completed trials (chance: 25 %), 60 % with 6, 80 % with 8 and
95 % with 12."""
EVALUATORS: dict[str, str] = {
    "fanova": "fANOVA",
    "ped-anova": "PED-ANOVA",
    "mean-decrease-impurity": "mean decrease in impurity",
}
"""The importance evaluators by name, with the label the report prints."""


@dataclass(frozen=True)
class Importance:
    """The importance of each searched parameter for the objective in one stratum:
    ``importances`` maps Optuna parameter names to shares (summing to 1, largest first),
    empty with ``reason`` when not available. With fewer than ``minimum`` completed trials
    (an early-stopping search), it is measured at ``epoch``: the latest evaluation that at
    least ``minimum`` trials, completed or stopped, reached (``n_used`` of them, each with
    its objective at that epoch)."""

    stratum: str
    study: str
    evaluator: str
    n_completed: int
    minimum: int
    importances: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    epoch: int | None = None
    n_used: int = 0

    @property
    def available(self) -> bool:
        return bool(self.importances)

    def text(self) -> str:
        """One line: ``fANOVA over 12 completed trials: model.latent_dim 0.71, ...``, or
        ``fANOVA over 12 trials at epoch 5 (...)``, or why it is not available."""
        head = f"{self.evaluator} over {self.n_completed} completed trial(s)"
        if self.epoch is not None:
            head = (
                f"{self.evaluator} over {self.n_used} trials at epoch {self.epoch}, the "
                f"objective there (completed and stopped trials; {self.n_completed} "
                f"completed, fewer than {self.minimum})"
            )
        if not self.available:
            return f"{head}: {NOT_AVAILABLE} ({self.reason})"
        return f"{head}: " + ", ".join(f"{k} {v:.2f}" for k, v in self.importances.items())


@dataclass(frozen=True)
class BestTrial:
    """The best completed trial of a stratum's search: its Optuna ``number``, the run's
    ``trial_id``, the ``objective`` (metric name) and its ``value``, the test AUC of the
    same trial (from trials.parquet; NaN when it cannot be found) and its ``params``."""

    number: int
    trial_id: str | None
    objective: str
    value: float
    test_auc: float
    params: dict[str, Any]

    def config_text(self) -> str:
        return ", ".join(f"{k.split('.')[-1]} {fmt(v, 4)}" for k, v in self.params.items())


@dataclass(frozen=True)
class StratumSearch:
    """What the search of one stratum found."""

    stratum: str
    study: str
    counts: dict[str, int]  # completed, stopped (pruned), failed, running
    best: BestTrial | None
    importance: Importance

    def line(self) -> str:
        """The console line of this stratum."""
        c = self.counts
        counts = f"{sum(c.values())} trials, {c['completed']} completed, {c['stopped']} stopped"
        counts += f", {c['failed']} failed" if c["failed"] else ""
        if self.best is None:
            found = "no completed trial"
        else:
            b = self.best
            test = "" if b.objective == "auc" else f", test AUC {fmt(b.test_auc)}"
            tid = f" ({b.trial_id})" if b.trial_id else ""
            found = (
                f"best completed trial {b.number}{tid}: {b.config_text()}; "
                f"{b.objective} {fmt(b.value)}{test}"
            )
        return f"search {self.stratum}: {found} ({counts}); importance: {self.importance.text()}"


def objective(run: RunData) -> tuple[str, str]:
    """The search objective (metric name, label) of a run: scheduler.metric of its space."""
    sched = (run.space or {}).get("scheduler")
    metric = sched.get("metric") if isinstance(sched, dict) else None
    metric = metric if isinstance(metric, str) and metric else "auc"
    return metric, METRIC_LABELS.get(metric, metric)


def load_studies(run: RunData) -> tuple[list[tuple[str, Any]], list[str]]:
    """(name, optuna.Study) of every study in the run's optuna.db (the first MAX_PANELS
    by name), and notes on what could not be read."""
    notes: list[str] = []
    studies: list[tuple[str, Any]] = []
    if run.optuna_db is None:
        return [], ["no optuna.db: a grid search"]
    try:
        import optuna
    except ImportError:
        return [], ["optuna is not installed"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{run.optuna_db.resolve()}"
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
    return studies, notes


def stratum_of(name: str, study: Any) -> str:
    """The stratum key of an Optuna study (its ``stratum`` attribute, else its name)."""
    return str(study.user_attrs.get("stratum") or name)


def trial_points(study: Any) -> list[dict[str, Any]]:
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
            dict(
                number=t.number,
                kind=kind,
                value=value,
                epoch=epoch,
                params=dict(t.params),
                trial_id=t.user_attrs.get("trial_id"),
            )
        )
    return points


def _evaluator(name: str) -> Callable[[], Any]:
    from optuna import importance as oi

    makers = {
        "fanova": lambda: oi.FanovaImportanceEvaluator(seed=0, n_trees=64),
        "ped-anova": lambda: oi.PedAnovaImportanceEvaluator(),
        "mean-decrease-impurity": lambda: oi.MeanDecreaseImpurityImportanceEvaluator(seed=0),
    }
    return makers[name]


def check_evaluator(evaluator: str) -> str:
    """The evaluator's label; raises ``ValueError`` for an unknown name."""
    if evaluator not in EVALUATORS:
        raise ValueError(
            f"evaluator: unknown importance evaluator {evaluator!r}; allowed: "
            f"{', '.join(EVALUATORS)}"
        )
    return EVALUATORS[evaluator]


def importance(study: Any, stratum: str, name: str = "", evaluator: str = "fanova") -> Importance:
    """The importance of each searched parameter for the objective over the completed
    trials of ``study``. With fewer than :data:`MIN_IMPORTANCE_TRIALS` completed trials,
    over the trials (completed or stopped) that reached the latest common evaluation epoch
    reached by at least that many, on their objective at that epoch (what the search
    compared when it stopped them); ``not available`` when no epoch has enough trials,
    with one searched parameter, or when the evaluator fails (the reason says which)."""
    label = check_evaluator(evaluator)
    done = [p for p in trial_points(study) if p["kind"] == "completed"]
    n = len(done)
    base: dict[str, Any] = dict(stratum=stratum, study=name or stratum, evaluator=label)
    base.update(n_completed=n, minimum=MIN_IMPORTANCE_TRIALS, n_used=n)
    target = study
    if n < MIN_IMPORTANCE_TRIALS:
        epoch, target = _study_at_common_epoch(study)
        if target is None:
            why = (
                f"the minimum is {MIN_IMPORTANCE_TRIALS} completed trials, or as many "
                "evaluated at a common epoch"
            )
            return Importance(**base, reason=why)
        base.update(epoch=epoch, n_used=len(target.trials))
        done = [dict(params=t.params) for t in target.trials]
    searched = {k for p in done for k in p["params"]}
    if len(searched) < 2:
        return Importance(**base, reason=f"{len(searched)} searched parameter(s)")
    from optuna.importance import get_param_importances

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = get_param_importances(target, evaluator=_evaluator(evaluator)())
    except Exception as exc:  # noqa: BLE001 - e.g. a parameter with one value only
        return Importance(**base, reason=f"{type(exc).__name__}: {exc}")
    shares = {str(k): float(v) for k, v in found.items()}
    return Importance(**base, importances=shares)


def _study_at_common_epoch(study: Any) -> tuple[int | None, Any]:
    """An in-memory copy of ``study`` holding, as completed trials, every completed or
    stopped trial that has a finite objective at the latest evaluation epoch that at
    least :data:`MIN_IMPORTANCE_TRIALS` of them reached, valued at that epoch; ``(None,
    None)`` when no epoch has that many."""
    import optuna

    state = optuna.trial.TrialState
    kept = (state.COMPLETE, state.PRUNED)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state in kept]
    reached: dict[int, list[Any]] = {}
    for t in trials:
        for step, value in t.intermediate_values.items():
            if value is not None and math.isfinite(float(value)):
                reached.setdefault(int(step), []).append(t)
    common = [e for e, ts in reached.items() if len(ts) >= MIN_IMPORTANCE_TRIALS]
    if not common:
        return None, None
    epoch = max(common)
    copy = optuna.create_study(directions=study.directions)
    for t in reached[epoch]:
        copy.add_trial(
            optuna.trial.create_trial(
                params=t.params, distributions=t.distributions, value=t.intermediate_values[epoch]
            )
        )
    return epoch, copy


def best_completed(
    study: Any, run: RunData, points: list[dict[str, Any]] | None = None
) -> BestTrial | None:
    """The best completed trial of ``study`` (by its direction), with the test AUC of the
    same trial from the run's trials table; None when no trial completed."""
    points = trial_points(study) if points is None else points
    done = [p for p in points if p["kind"] == "completed"]
    if not done:
        return None
    maximize = study.direction.name == "MAXIMIZE"
    best = (max if maximize else min)(done, key=lambda p: float(p["value"]))
    metric, _ = objective(run)
    return BestTrial(
        number=int(best["number"]),
        trial_id=best["trial_id"],
        objective=metric,
        value=float(best["value"]),
        test_auc=_test_auc(run.trials, best["trial_id"]),
        params=dict(best["params"]),
    )


def _test_auc(trials: pd.DataFrame | None, trial_id: str | None) -> float:
    if trials is None or trial_id is None or not {"trial_id", "auc"} <= set(trials.columns):
        return math.nan
    rows = trials[trials["trial_id"].astype(str) == str(trial_id)]
    if rows.empty:
        return math.nan
    value = pd.to_numeric(rows["auc"], errors="coerce").iloc[-1]
    return float(value) if pd.notna(value) else math.nan


def search_summary(
    run: RunData,
    studies: list[tuple[str, Any]] | None = None,
    evaluator: str = "fanova",
) -> list[StratumSearch]:
    """What the search found in every stratum of the run (empty for a grid search)."""
    if studies is None:
        studies, _ = load_studies(run)
    out = []
    for name, study in studies:
        points = trial_points(study)
        stratum = stratum_of(name, study)
        counts = {k: sum(p["kind"] == k for p in points) for k in ("completed", "stopped")}
        counts["failed"] = sum(p["kind"] in ("failed", "running") for p in points)
        out.append(
            StratumSearch(
                stratum=stratum,
                study=name,
                counts=counts,
                best=best_completed(study, run, points),
                importance=importance(study, stratum, name, evaluator),
            )
        )
    return out


def search_lines(run_dir: Path | str) -> list[str]:
    """The console lines of a searched run, one per stratum (see :meth:`StratumSearch.line`);
    empty for a grid search."""
    run = read_run(run_dir)
    if run.optuna_db is None:
        return []
    return [s.line() for s in search_summary(run)]
