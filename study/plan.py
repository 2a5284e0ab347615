"""What a study will run, decided once before Ray starts: the :class:`Plan` (its strata,
the trial configs still to run, each one ``ae4ad.fit`` accepts, how many are already
finished). The checks that build each model once are :mod:`study.preflight` (run when
the space is loaded).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from study.schema import Space

__all__ = ["Plan", "StudyError", "check_fit_configs", "make_plan"]


class StudyError(Exception):
    """A study cannot run as asked (results already there, resources the cluster does
    not have, data that cannot be loaded): a one-line message for the user."""


@dataclass
class Plan:
    """The trials of one session of a study.

    A grid plans every config (``todo``: those without a finished row yet, trial ids
    set); an Optuna search plans ``n_trials`` per stratum, asked for as it goes (``todo``
    stays empty). ``already`` counts the planned trials the run's tables hold finished.

    >>> from study.space import load_space
    >>> plan = make_plan(load_space("latent"))
    >>> plan.total, plan.already, plan.to_run, len(plan.todo), plan.strata
    (16, 0, 16, 16, ['phantom/ae'])
    >>> plan.belongs({"trial_id": plan.todo[0]["trial_id"]}), plan.belongs({"trial_id": "x"})
    (True, False)
    """

    space: Space
    strata: list[str]
    total: int
    already: int
    todo: list[dict[str, Any]] = field(default_factory=list)
    planned_ids: frozenset[str] | None = None  # a grid's trial ids; None for a search
    # the Tune trials of a grid's todo: configs and fused bundles (study.fusion.fuse)
    units: list[dict[str, Any]] | None = None

    @property
    def to_run(self) -> int:
        return self.total - self.already

    def belongs(self, row: Mapping[str, Any]) -> bool:
        """Whether a row of the tables is one of this plan's trials (a resumed folder may
        also hold rows of configs the space no longer has)."""
        if self.planned_ids is not None:
            return row.get("trial_id") in self.planned_ids
        return row.get("stratum") in self.strata

    def counts(self, rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
        """This plan's rows per finished status."""
        from study.results import FINISHED_STATUSES

        counts = {s: 0 for s in FINISHED_STATUSES}
        for row in rows:
            if self.belongs(row):
                counts[str(row["status"])] = counts.get(str(row["status"]), 0) + 1
        return counts

    def headline(self) -> str:
        n = len(self.strata)
        return (
            f"study {self.space.name}: {self.total} trials ({self.space.search.type}) in "
            f"{n} strat{'um' if n == 1 else 'a'}; {self.already} already finished, "
            f"{self.to_run} to run"
        )


def make_plan(
    space: Space,
    done_ids: Iterable[str] = (),
    done_counts: Mapping[str, int] | None = None,
) -> Plan:
    """The plan of ``space`` given the trial ids the run's tables hold finished
    (``done_ids``) and their number per stratum (``done_counts``). Raises StudyError for a
    trial config ``ae4ad.fit`` rejects, or an Optuna sampler that cannot be built."""
    from study.space import strata

    keys = [s.key for s in strata(space)]
    if space.search.type != "grid":
        from study.searcher import make_sampler

        make_sampler(space.search.sampler or "tpe", 0)  # e.g. cmaes without its package
        budget = int(space.search.n_trials or 0)
        counts = done_counts or {}
        already = sum(min(budget, counts.get(k, 0)) for k in keys)
        return Plan(space, keys, budget * len(keys), already)
    planned = {}
    for config in _grid(space):
        planned.setdefault(config["trial_id"], config)
    done = set(done_ids)
    todo = [c for tid, c in planned.items() if tid not in done]
    check_fit_configs(todo)
    return Plan(space, keys, len(planned), len(planned) - len(todo), todo, frozenset(planned))


def _grid(space: Space) -> list[dict[str, Any]]:
    from study.space import grid_trials, trial_id

    return [{**config, "trial_id": trial_id(config)} for config in grid_trials(space)]


def check_fit_configs(configs: Sequence[Mapping[str, Any]]) -> None:
    """Raise StudyError for the first trial config ``ae4ad.fit`` would reject (unknown
    keys, bad values), before Ray starts."""
    from ae4ad.train import ConfigError, TrainConfig
    from study.space import fit_config

    for config in configs:
        try:
            TrainConfig.from_dict(fit_config(config))
        except ConfigError as exc:
            raise StudyError(f"trial {config.get('trial_id')}: {exc}") from None
