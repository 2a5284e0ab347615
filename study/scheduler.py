"""Early stopping per stratum: one ASHA state for each (data set x model).

ASHA stops a trial whose objective at a rung (an epoch milestone) falls below the top
``1 / reduction_factor`` of the values recorded there. With one ASHA for a whole study
the rungs mix data sets: the trials of a hard data set (AUC ~0.75) all land below the
trials of an easy one (AUC ~0.9) and are all stopped. Ray Tune has no scheduler that
keeps separate state per group of trials, so :class:`StratifiedScheduler` routes every
trial, by the ``stratum`` key of its config, to a scheduler of its own stratum, and
:func:`asha_per_stratum` gives each stratum an ``ASHAScheduler`` whose ``max_t`` is that
stratum's largest epoch count. A stratum's stopping decisions then depend on its own
trials only: the same whether or not other strata run in the same study.

On resume, :func:`restore_rungs` replays the evaluations of the trials that finished
before (history.parquet holds every evaluation) through the schedulers, so that the
rungs hold what they held when the earlier session ended and new trials are compared
with the old ones. Trials that were running when the earlier session stopped left no
row and start over; their partial evaluations are not in the rungs.

Example (fake trials, no Ray cluster needed):
    >>> from study.space import load_space
    >>> space = load_space("optuna")
    >>> scheduler = asha_per_stratum(space)
    >>> sorted(scheduler.schedulers), scheduler.max_t("phantom-k8/ae")
    (['phantom-k3/ae', 'phantom-k8/ae'], 30)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from study.space import TRAINING_DEFAULTS, DatasetSpec, Space, strata

__all__ = [
    "StratifiedScheduler",
    "asha_per_stratum",
    "restore_rungs",
    "stratum_max_epochs",
]

STRATUM_KEY = "stratum"  # the trial config key that names a trial's stratum


class StratifiedScheduler(FIFOScheduler):
    """A Tune scheduler that hands each trial to the scheduler of its stratum.

    ``schedulers`` maps stratum keys (``<data set label>/<model label>``, the ``stratum``
    key of every trial config) to schedulers; ``factory(key)`` builds one for a stratum
    not in the mapping (none: such a trial raises ``KeyError``). Every trial event
    (add, result, complete, error, remove) goes to its stratum's scheduler only, so no
    state is shared between strata. Trials start in the order Tune creates them (FIFO,
    as ASHA itself does).
    """

    def __init__(
        self,
        schedulers: Mapping[str, TrialScheduler],
        factory: Callable[[str], TrialScheduler] | None = None,
    ) -> None:
        super().__init__()
        self.schedulers: dict[str, TrialScheduler] = dict(schedulers)
        self._factory = factory

    def scheduler_for(self, stratum: str) -> TrialScheduler:
        """The scheduler of one stratum (built by the factory on first use)."""
        scheduler = self.schedulers.get(stratum)
        if scheduler is None:
            if self._factory is None:
                raise KeyError(
                    f"no scheduler for stratum {stratum!r} (known: {', '.join(self.schedulers)})"
                )
            scheduler = self.schedulers[stratum] = self._factory(stratum)
        return scheduler

    def _of(self, trial: Any) -> TrialScheduler:
        config = getattr(trial, "config", None) or {}
        return self.scheduler_for(str(config.get(STRATUM_KEY)))

    # ------------------------------------------------------------------ TrialScheduler

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return all(s.set_search_properties(metric, mode, **spec) for s in self.schedulers.values())

    def on_trial_add(self, tune_controller, trial) -> None:  # noqa: ANN001
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:  # noqa: ANN001
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:  # noqa: ANN001
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial) -> None:  # noqa: ANN001
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial) -> None:  # noqa: ANN001
        self._of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{key}: {s.debug_string()}" for key, s in self.schedulers.items())

    def max_t(self, stratum: str) -> int | None:
        """The ``max_t`` of a stratum's ASHA (None for other schedulers)."""
        return getattr(self.scheduler_for(stratum), "_max_t", None)

    # Tune pickles its configuration for its own restore, which a study does not use
    # (it resumes from its tables, see restore_rungs); the factory may be a closure.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_factory"] = None
        return state


def stratum_max_epochs(space: Space, dataset: DatasetSpec) -> int:
    """The most epochs a trial of ``dataset`` trains (its ``training.epochs``, the largest
    value where it is searched)."""
    spec = space.training_for(dataset).get("epochs")
    return int(spec.max_value()) if spec else int(TRAINING_DEFAULTS["epochs"])


def _asha(space: Space, max_t: int) -> ASHAScheduler:
    return ASHAScheduler(
        time_attr="epoch",
        metric=space.scheduler.metric,
        mode=space.scheduler.mode,
        max_t=max_t,
        grace_period=max(1, min(int(space.scheduler.grace_period), max_t)),
        reduction_factor=space.scheduler.reduction_factor,
    )


def asha_per_stratum(space: Space) -> StratifiedScheduler:
    """One ``ASHAScheduler`` per stratum of ``space`` (time attribute ``epoch``), with
    ``max_t`` from that stratum's epochs and the space's grace period (at most
    ``max_t``), reduction factor, metric and mode."""
    by_stratum = {s.key: _asha(space, stratum_max_epochs(space, s.dataset)) for s in strata(space)}
    fallback = max((stratum_max_epochs(space, d) for d in space.datasets), default=1)
    return StratifiedScheduler(by_stratum, factory=lambda key: _asha(space, fallback))


# --------------------------------------------------------------------------- resume


@dataclass
class _Replayed:
    """A finished trial of an earlier session, as the schedulers see a trial."""

    trial_id: str
    config: dict[str, Any] = field(default_factory=dict)


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def restore_rungs(
    scheduler: StratifiedScheduler,
    trials: Iterable[Mapping[str, Any]],
    history: Iterable[Mapping[str, Any]],
    *,
    metric: str,
    stand_in: float,
) -> dict[str, int]:
    """Replay the evaluations of finished trials through their strata's schedulers.

    ``trials``: rows of the trials table (``trial_id``, ``stratum``, ``status``);
    ``history``: rows of history.parquet (``trial_id``, ``epoch``, ``metric``). Each
    trial is added, given its evaluations in epoch order, then completed (removed when
    it errored): the calls Tune made while it ran, so the rungs end up holding
    the value each trial had at each milestone it reached. A missing or non-finite
    objective is replayed as ``stand_in``, the value the trainable reported in its
    place. Trials of strata the scheduler does not know are skipped. Returns the
    number of trials replayed per stratum.
    """
    evaluations: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for row in history:
        epoch = row.get("epoch")
        if not _finite(epoch):
            continue
        value = row.get(metric)
        epoch = int(epoch) if float(epoch).is_integer() else float(epoch)
        result = {"epoch": epoch, metric: float(value) if _finite(value) else stand_in}
        evaluations.setdefault(str(row.get("trial_id")), []).append((float(epoch), result))
    replayed: dict[str, int] = {}
    for row in trials:
        stratum = str(row.get(STRATUM_KEY))
        records = sorted(evaluations.get(str(row.get("trial_id")), []), key=lambda e: e[0])
        if stratum not in scheduler.schedulers or not records:
            continue
        trial = _Replayed(f"restored:{row.get('trial_id')}", {STRATUM_KEY: stratum})
        scheduler.on_trial_add(None, trial)
        for _, result in records:  # all of them: the history is what the trial reached
            scheduler.on_trial_result(None, trial, result)
        if row.get("status") == "errored":
            scheduler.on_trial_remove(None, trial)
        else:
            scheduler.on_trial_complete(None, trial, records[-1][1])
        replayed[stratum] = replayed.get(stratum, 0) + 1
    return replayed
