"""Ray Tune searchers of a study: the grid plan, and Optuna with one study per stratum.

Searching never optimises across data sets: :class:`StratifiedOptunaSearcher` keeps one
Optuna study per stratum (data set x model) in ``<run dir>/optuna.db`` (SQLite), named
``<study>/<stratum key>``, asks and tells through Optuna's ask/tell interface and
hands out trials round-robin over the strata until each has ``n_trials``. Open the
studies with ``optuna-dashboard sqlite:///runs/<study>/optuna.db``.

Example (without Ray running; the searcher only talks to Optuna):
    >>> import tempfile
    >>> from pathlib import Path
    >>> from study.space import load_space
    >>> space = load_space("optuna", ["search.n_trials=2"])
    >>> url = "sqlite:///" + str(Path(tempfile.mkdtemp()) / "optuna.db")
    >>> searcher = StratifiedOptunaSearcher(space, url)
    >>> configs = [searcher.suggest(f"t{i}") for i in range(5)]
    >>> [c["stratum"] for c in configs[:4]], configs[4]
    (['phantom-k3/ae', 'phantom-k8/ae', 'phantom-k3/ae', 'phantom-k8/ae'], 'FINISHED')
    >>> searcher.on_trial_complete("t0", {"auc": 0.8, "is_final": True, "status": "completed"})
    >>> searcher.study("phantom-k3/ae").trials[0].value
    0.8
"""

from __future__ import annotations

import importlib.util
import logging
import math
import numbers
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from study.space import Space, SpaceError, sample_trial, strata
from study.space import trial_id as make_trial_id

__all__ = [
    "REPLACED_KEY",
    "PlanSearcher",
    "StratifiedOptunaSearcher",
    "make_sampler",
    "study_name",
]

logger = logging.getLogger(__name__)

# A result carrying ``REPLACED_KEY: True`` had a non-finite objective, replaced by a
# finite stand-in for the scheduler; the searcher treats it as failed.
REPLACED_KEY = "metric_replaced"


def study_name(space: Space, stratum_key: str) -> str:
    """The Optuna study name of one stratum: ``<study>/<dataset label>/<model label>``."""
    return f"{space.name}/{stratum_key}"


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    """An Optuna sampler by the space's name for it: tpe (default), random or cmaes.

    >>> type(make_sampler("random", 0)).__name__
    'RandomSampler'
    """
    if name in (None, "tpe"):
        # constant_liar: trials running at once do not all pile onto one point
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        if importlib.util.find_spec("cmaes") is None:
            raise SpaceError(
                "search.sampler: cmaes needs the 'cmaes' package (pip install cmaes), got 'cmaes'"
            )
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise SpaceError(f"search.sampler: expected one of tpe, random, cmaes, got {name!r}")


class PlanSearcher(Searcher):
    """Hands out a fixed list of trial configs in order, then says FINISHED.

    >>> searcher = PlanSearcher([{"x": 1}])
    >>> searcher.suggest("a"), searcher.suggest("b")
    ({'x': 1}, 'FINISHED')
    """

    def __init__(self, configs: Sequence[Mapping[str, Any]]) -> None:
        super().__init__()
        self._queue = deque(dict(c) for c in configs)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:  # noqa: ANN001
        return True

    def suggest(self, trial_id: str) -> dict | str:
        if self._queue:
            return self._queue.popleft()
        return Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:  # noqa: ANN001
        pass

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: resuming reads the run's own tables."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore (see :meth:`save`)."""


class StratifiedOptunaSearcher(Searcher):
    """One Optuna study per stratum, asked round-robin until each has ``n_trials``.

    - ``done_counts``: trials per stratum key already finished (from the run's
      trials table on resume); only the rest are asked for.
    - ``finished``: ``{trial_id: (status, objective value[, epochs done])}`` of the
      trials in the run's table. Trials an interrupted run left RUNNING in optuna.db are
      told their value when they are in the table (an early-stopped one PRUNED with its
      last value at its last epoch), else marked FAIL.
    - ``metric`` / ``mode``: the objective (the scheduler's metric and mode).

    Every evaluation is reported to the trial's Optuna trial as an intermediate value at
    its epoch (``trial.report``), the one the scheduler stopped it on included, so TPE
    ranks early-stopped trials by how far they got and what they reached. Errored,
    diverged and non-finite trials are told FAIL, early-stopped ones PRUNED (Optuna
    gives a pruned trial its last intermediate value; it rejects NaN values). Each
    study's sampler is seeded from ``search.seed``, the stratum's position and the
    number of trials the study already holds, so a resumed run does not repeat the
    points drawn before it.
    """

    def __init__(
        self,
        space: Space,
        storage_url: str,
        *,
        done_counts: Mapping[str, int] | None = None,
        finished: Mapping[str, tuple[str, float | None]] | None = None,
        metric: str | None = None,
        mode: str | None = None,
    ) -> None:
        metric = metric or space.scheduler.metric
        mode = mode or space.scheduler.mode
        super().__init__(metric=metric, mode=mode)
        self._space = space
        self._strata = strata(space)
        self._stratum_by_key = {s.key: s for s in self._strata}
        self._studies: dict[str, optuna.Study] = {}
        self._remaining: dict[str, int] = {}
        self._live: dict[str, tuple[str, optuna.trial.Trial]] = {}
        self._reported: dict[str, set[int]] = {}  # epochs reported per live trial
        self._cursor = 0
        self.recovered: dict[str, int] = {"told": 0, "failed": 0}
        done_counts = dict(done_counts or {})
        finished = dict(finished or {})
        storage = optuna.storages.RDBStorage(storage_url)
        direction = "maximize" if mode == "max" else "minimize"
        base_seed = space.search.seed or 0
        for index, stratum in enumerate(self._strata):
            study = optuna.create_study(
                storage=storage,
                study_name=study_name(space, stratum.key),
                direction=direction,
                load_if_exists=True,
                sampler=optuna.samplers.RandomSampler(seed=base_seed),
            )
            self._recover(study, finished)
            n_before = len(study.get_trials(deepcopy=False))
            study.sampler = make_sampler(
                space.search.sampler or "tpe", base_seed + 10_007 * index + n_before
            )
            study.set_user_attr("stratum", stratum.key)
            self._studies[stratum.key] = study
            budget = int(space.search.n_trials or 0)
            self._remaining[stratum.key] = max(0, budget - int(done_counts.get(stratum.key, 0)))

    # ------------------------------------------------------------------ state

    def __getstate__(self) -> dict:
        # Tune pickles its configuration for its own restore, which a study does not use
        # (it resumes from optuna.db); the open studies stay in this process.
        state = dict(self.__dict__)
        state["_studies"], state["_live"], state["_reported"] = {}, {}, {}
        return state

    def study(self, stratum_key: str) -> optuna.Study:
        """The Optuna study of one stratum."""
        return self._studies[stratum_key]

    @property
    def remaining(self) -> dict[str, int]:
        """Trials still to be asked per stratum."""
        return dict(self._remaining)

    def _recover(self, study: optuna.Study, finished: Mapping[str, tuple[str, float | None]]):
        stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
        for frozen in stale:
            tid = frozen.user_attrs.get("trial_id")
            if tid in finished:
                status, value, *epoch = finished[tid]
                if status == "early-stopped" and epoch and frozen.last_step is None:
                    self._report_last(study, frozen, value, epoch[0])
                self._tell(study, frozen.number, status, value)
                self.recovered["told"] += 1
            else:
                study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)
                self.recovered["failed"] += 1

    @staticmethod
    def _report_last(study: optuna.Study, frozen: Any, value: Any, epoch: Any) -> None:
        """The last evaluation of a trial an interrupted run left RUNNING, as its
        intermediate value (so that it is not PRUNED without one)."""
        finite = isinstance(value, numbers.Real) and math.isfinite(value)
        if not (finite and isinstance(epoch, numbers.Real) and math.isfinite(epoch)):
            return
        try:  # Optuna has no public handle on an existing trial but its internal id
            optuna.trial.Trial(study, frozen._trial_id).report(float(value), int(epoch))
        except Exception as exc:
            logger.warning("optuna: could not report an intermediate value: %s", exc)

    def _tell(self, study: optuna.Study, trial: Any, status: str, value: float | None) -> None:
        ok = value is not None and isinstance(value, (int, float)) and math.isfinite(value)
        if status == "completed" and ok:
            study.tell(trial, values=float(value), skip_if_finished=True)
        elif status == "early-stopped":
            study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        else:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)

    # ------------------------------------------------------------------ Searcher API

    def set_search_properties(self, metric, mode, config, **spec) -> bool:  # noqa: ANN001
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        n = len(self._strata)
        for _ in range(n):
            stratum = self._strata[self._cursor % n]
            self._cursor += 1
            if self._remaining[stratum.key] > 0:
                break
        else:
            return Searcher.FINISHED
        self._remaining[stratum.key] -= 1
        study = self._studies[stratum.key]
        trial = study.ask()
        try:
            config = sample_trial(self._space, stratum, trial)
        except Exception:
            study.tell(trial, state=TrialState.FAIL)
            raise
        config["optuna_trial"] = trial.number
        config["trial_id"] = make_trial_id(config)
        trial.set_user_attr("trial_id", config["trial_id"])
        self._live[trial_id] = (stratum.key, trial)
        return config

    def _report(self, trial_id: str, trial: optuna.trial.Trial, result: Mapping[str, Any]) -> None:
        """Report the objective of one evaluation as an intermediate value at its epoch
        (once per epoch; a replaced, non-finite objective is not reported)."""
        if result.get(REPLACED_KEY):
            return
        value, step = result.get(self.metric), result.get("epoch")
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            return
        if not (isinstance(step, (int, float)) and float(step).is_integer() and step >= 0):
            return
        steps = self._reported.setdefault(trial_id, set())
        if int(step) in steps:
            return
        steps.add(int(step))
        try:
            trial.report(float(value), int(step))
        except Exception as exc:  # a storage hiccup must not stop the study
            logger.warning("optuna: could not report an intermediate value: %s", exc)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        entry = self._live.get(trial_id)
        if entry is not None:
            self._report(trial_id, entry[1], result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:  # noqa: ANN001
        entry = self._live.pop(trial_id, None)
        if entry is None:
            return
        key, trial = entry
        if error or not result:
            status, value = "errored", None
        elif result.get("status") == "diverged" or result.get(REPLACED_KEY):
            status, value = "diverged", None
        elif not result.get("is_final"):
            status, value = "early-stopped", None
        else:
            status, value = "completed", result.get(self.metric)
        if result:
            # Tune gives the searcher no result the scheduler stopped the trial on (its
            # last, at a rung or at max_t): report it here, before the trial is told
            self._report(trial_id, trial, result)
        self._reported.pop(trial_id, None)
        try:
            self._tell(self._studies[key], trial, status, value)
        except Exception as exc:  # a storage hiccup must not stop the study
            logger.warning("optuna: could not record trial %s: %s", trial.number, exc)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the studies live in optuna.db."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore (see :meth:`save`)."""
