"""Early stopping per stratum (study.scheduler): each stratum keeps its own ASHA rungs.

The isolation proofs drive the schedulers with fake trials and results (fast and
deterministic): two strata whose AUC levels differ by 0.2 each keep a trial to max_t,
and a stratum's stopping decisions are the same alone and next to another stratum,
however the two strata's events interleave. Resuming replays the history into the
rungs. Two small real runs: Tune with a synthetic trainable (one trial at a time, so
the order is fixed) and run_study on tiny phantoms, whose early-stopped trials reach
Optuna as PRUNED with their learning curves.
"""

from __future__ import annotations

import io
import random
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from study import runner, tuner
from study.results import RunTables
from study.space import load_space

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_runner import TINY_AE, TINY_DATA, quiet, write_space  # noqa: E402

EASY, HARD = "phantom-k3/ae", "phantom-k8/ae"  # the strata of optuna.yaml
STOP = "STOP"  # ray.tune.schedulers.TrialScheduler.STOP
MAX_T = 30  # optuna.yaml: 30 epochs, evaluated every 5, ASHA grace 5, reduction 3


@pytest.fixture(scope="module", autouse=True)
def ray_env():
    """Ray reads its environment when it is first imported: set it up (loopback only,
    token auth) before this module imports study.scheduler, which imports Ray."""
    runner.prepare_environment(local=True)


def asha_per_stratum(space):  # noqa: ANN001
    from study.scheduler import asha_per_stratum

    return asha_per_stratum(space)


@dataclass
class FakeTrial:
    trial_id: str
    config: dict = field(default_factory=dict)


def curve(level: float, seed: int, epochs: int = MAX_T, every: int = 5) -> list[tuple]:
    """AUC per evaluation of one trial: the stratum's level, a per-trial skill and a
    per-trial rate of improvement (seeded)."""
    rng = np.random.default_rng(seed)
    skill, slope = rng.normal(0.0, 0.03), rng.uniform(0.0, 0.08)
    return [(e, level + skill + slope * e / epochs) for e in range(every, epochs + 1, every)]


def trials_of(stratum: str, level: float, n: int = 12, seed: int = 0) -> list[tuple]:
    name = stratum.split("/")[0]
    return [
        (FakeTrial(f"{name}-{i}", {"stratum": stratum}), curve(level, seed + 1000 * i))
        for i in range(n)
    ]


class StratumRun:
    """One stratum's trials run ``slots`` at a time, their results taken round-robin:
    the order of a stratum's own events depends on its own decisions only."""

    def __init__(self, trials: list[tuple], slots: int = 3) -> None:
        self.pending = deque(trials)
        self.running: deque = deque()
        self.slots = slots
        self.reached: dict[str, int] = {}  # trial id -> last epoch it trained
        self.history: list[dict] = []

    def done(self) -> bool:
        return not self.pending and not self.running

    def step(self, scheduler) -> None:  # noqa: ANN001
        if self.pending and len(self.running) < self.slots:
            trial, values = self.pending.popleft()
            scheduler.on_trial_add(None, trial)
            self.running.append((trial, deque(values)))
            return
        trial, rest = self.running.popleft()
        epoch, value = rest.popleft()
        result = {"epoch": epoch, "auc": value}
        self.history.append({"trial_id": trial.trial_id, **result})
        decision = scheduler.on_trial_result(None, trial, result)
        if decision == STOP or not rest:
            scheduler.on_trial_complete(None, trial, result)
            self.reached[trial.trial_id] = epoch
        else:
            self.running.append((trial, rest))

    def stopped(self) -> set[str]:
        return stopped(self.reached)


def stopped(reached: dict[str, int]) -> set[str]:
    return {t for t, e in reached.items() if e < MAX_T}


def simulate(scheduler, runs: list[StratumRun], order_seed: int = 0) -> None:
    """Advance the runs until all are done, the next one to move drawn at random."""
    rng = random.Random(order_seed)
    while True:
        live = [r for r in runs if not r.done()]
        if not live:
            return
        rng.choice(live).step(scheduler)


def optuna_space(*overrides: str):
    # the shipped space optimises val_auc; the fake results here carry "auc"
    return load_space("optuna", ["scheduler.metric=auc", *overrides])


# --------------------------------------------------------------------------- isolation


def test_each_stratum_keeps_a_trial_to_max_t_and_decides_alone():
    space = optuna_space()
    easy, hard = trials_of(EASY, 0.90, seed=1), trials_of(HARD, 0.70, seed=2)

    alone = {}
    for stratum, trials in ((EASY, easy), (HARD, hard)):
        run = StratumRun(trials)
        simulate(asha_per_stratum(space), [run])
        alone[stratum] = run.reached
    for order_seed in range(5):
        both = [StratumRun(easy), StratumRun(hard)]
        simulate(asha_per_stratum(space), both, order_seed)
        for stratum, run in zip((EASY, HARD), both):
            assert run.reached == alone[stratum], (stratum, order_seed)
            assert max(run.reached.values()) == MAX_T, stratum  # at least one to max_t
            assert run.stopped(), stratum  # and ASHA did stop some

    # the old way, one ASHA for the whole study, starves the hard stratum
    from ray.tune.schedulers import ASHAScheduler

    single = ASHAScheduler(
        time_attr="epoch", metric="auc", mode="max", max_t=MAX_T, grace_period=5,
        reduction_factor=3,
    )  # fmt: skip
    shared = [StratumRun(easy), StratumRun(hard)]
    simulate(single, shared, 0)
    assert len(shared[1].stopped()) > len(stopped(alone[HARD]))


def test_max_t_comes_from_each_stratums_epochs():
    space = optuna_space(
        "datasets[1].training={epochs: {int: [10, 60]}}", "scheduler.grace_period=100"
    )
    from study.scheduler import StratifiedScheduler

    scheduler = tuner.make_scheduler(space)
    assert isinstance(scheduler, StratifiedScheduler)
    assert scheduler.max_t(EASY) == 30 and scheduler.max_t(HARD) == 60
    asha = scheduler.schedulers[HARD]
    assert asha._time_attr == "epoch" and asha._brackets[0]._rungs[-1][0] == 60  # grace <= max_t
    assert tuner.make_scheduler(load_space("smoke")) is None
    # a trial of a stratum the space does not name still gets a scheduler of its own
    stray = FakeTrial("x", {"stratum": "other/ae"})
    scheduler.on_trial_add(None, stray)
    assert "other/ae" in scheduler.schedulers and scheduler.max_t("other/ae") == 60


# --------------------------------------------------------------------------- resume


def rungs(scheduler, stratum: str) -> list[tuple]:  # noqa: ANN001
    """(milestone, sorted recorded values) of a stratum's ASHA rungs."""
    bracket = scheduler.schedulers[stratum]._brackets[0]
    return [(m, sorted(recorded.values())) for m, recorded in bracket._rungs]


def test_resume_restores_the_rungs_from_the_history(tmp_path):
    space = optuna_space()
    easy, hard = trials_of(EASY, 0.90, seed=3), trials_of(HARD, 0.70, seed=4)
    first = [StratumRun(easy[:6]), StratumRun(hard[:6])]
    live = asha_per_stratum(space)
    simulate(live, first, 0)

    # the tables of the first session, written and read back as a resumed run does
    tables = RunTables(tmp_path / "run")
    for stratum, run in zip((EASY, HARD), first):
        by_trial: dict[str, list[dict]] = {}
        for h in run.history:
            by_trial.setdefault(h["trial_id"], []).append(h)
        for tid, records in by_trial.items():
            done = records[-1]["epoch"] >= MAX_T
            records = [
                {**r, "is_final": done and r is records[-1], "status": "running"} for r in records
            ]
            config = {"stratum": stratum, "dataset_label": stratum.split("/")[0], "model": "ae"}
            tables.add_trial(config, records, trial_id=tid, study="optuna")
    # an errored trial with no evaluation, and one of a stratum the space lost, are skipped
    tables.add_trial({"stratum": EASY}, [], trial_id="err", study="optuna", errored=True)
    gone = [{"epoch": 5, "auc": 0.99, "is_final": False}]
    tables.add_trial({"stratum": "gone/ae"}, gone, trial_id="gone", study="optuna")
    tables.flush()
    loaded = RunTables.load(tables.run_dir)

    out = io.StringIO()
    restored = tuner.make_scheduler(space, loaded, out)
    assert "rungs restored from the history of 12 finished trial(s)" in out.getvalue()
    for stratum in (EASY, HARD):
        assert rungs(restored, stratum) == rungs(live, stratum)
    assert rungs(restored, EASY)[-1][1], "the first rung holds the first session's values"

    # the second half decides exactly as it would have without the interruption
    fresh = asha_per_stratum(space)
    seconds = {}
    for name, scheduler in (("uninterrupted", live), ("resumed", restored), ("empty", fresh)):
        runs = [StratumRun(easy[6:]), StratumRun(hard[6:])]
        simulate(scheduler, runs, 1)
        seconds[name] = [r.reached for r in runs]
    assert seconds["resumed"] == seconds["uninterrupted"]
    # rungs that start empty let more trials through (what resume did before)
    n_stopped = {k: sum(e < MAX_T for r in v for e in r.values()) for k, v in seconds.items()}
    assert n_stopped["empty"] < n_stopped["resumed"]


def test_restore_replays_a_replaced_objective_as_its_stand_in():
    from study.scheduler import restore_rungs

    space = optuna_space()
    scheduler = asha_per_stratum(space)
    rows = [{"trial_id": "nan", "stratum": EASY, "status": "diverged"}]
    history = [{"trial_id": "nan", "epoch": 5, "auc": float("nan")}]
    assert restore_rungs(scheduler, rows, history, metric="auc", stand_in=0.0) == {EASY: 1}
    assert rungs(scheduler, EASY)[-1] == (5, [0.0])


# --------------------------------------------------------------------------- real runs


def synthetic_trainable(config: dict) -> None:
    from ray import tune

    for epoch, value in curve(config["level"], config["curve_seed"]):
        tune.report({"epoch": epoch, "auc": value})


def tune_run(space, configs: list[dict], tmp_path: Path) -> dict[str, int]:
    """Run ``configs`` one at a time under the per-stratum ASHA; last epoch per trial."""
    from ray import cloudpickle, tune

    from study.searcher import PlanSearcher

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import it

    tuner = tune.Tuner(
        synthetic_trainable,
        tune_config=tune.TuneConfig(
            search_alg=PlanSearcher(configs),
            scheduler=asha_per_stratum(space),
            num_samples=-1,
            max_concurrent_trials=1,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    )
    grid = tuner.fit()
    return {r.config["name"]: int(r.metrics["epoch"]) for r in grid}


def test_tune_run_two_strata_alone_and_together(tmp_path, ray_session):
    space = optuna_space()

    def configs(stratum: str, level: float, seed: int) -> list[dict]:
        name = stratum.split("/")[0]
        return [
            {
                "stratum": stratum,
                "level": level,
                "curve_seed": seed + 1000 * i,
                "name": f"{name}-{i}",
            }
            for i in range(6)
        ]

    easy, hard = configs(EASY, 0.9, 5), configs(HARD, 0.7, 6)
    together = [c for pair in zip(easy, hard) for c in pair]
    both = tune_run(space, together, tmp_path / "both")
    hard_alone = tune_run(space, hard, tmp_path / "hard")
    assert {k: v for k, v in both.items() if k.startswith("phantom-k8")} == hard_alone
    for prefix in ("phantom-k3", "phantom-k8"):
        reached = [e for k, e in both.items() if k.startswith(prefix)]
        assert max(reached) == MAX_T and min(reached) < MAX_T, (prefix, reached)


def test_run_study_reports_learning_curves_to_optuna_and_resumes_rungs(tmp_path, ray_session):
    body = {
        "name": "asha",
        "datasets": [
            {"name": "phantom", "label": "easy", "params": {**TINY_DATA, "intrinsic_dim": 2}},
            {"name": "phantom", "label": "hard", "params": {**TINY_DATA, "intrinsic_dim": 8}},
        ],
        "models": [{"name": "ae", "params": {"latent_dim": {"int": [1, 16]}, **TINY_AE}}],
        "training": {"epochs": 3, "eval_every": 1, "lr": {"float": [1e-4, 1e-2], "log": True}},
        "seeds": [0],
        "search": {"type": "optuna", "sampler": "tpe", "n_trials": 4, "seed": 0},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"max_concurrent_trials": 1},  # the same stopping order every run
    }
    space = load_space(str(write_space(tmp_path, body)))
    runner.run_study(space, quiet())
    trials = pd.read_parquet(space.run_dir / "trials.parquet")
    storage = f"sqlite:///{space.run_dir / 'optuna.db'}"
    for label in ("easy", "hard"):
        rows = trials[trials["dataset"] == label]
        assert len(rows) == 4 and (rows["status"] == "completed").any(), rows["status"]
        study = optuna.load_study(study_name=f"asha/{label}/ae", storage=storage)
        assert len(study.trials) == 4
        by_id = {t.user_attrs["trial_id"]: t for t in study.trials}
        for row in rows.itertuples():
            t = by_id[row.trial_id]
            # every evaluation is an intermediate value, the stopping one included
            assert sorted(t.intermediate_values) == list(range(1, int(row.epochs_done) + 1))
            assert t.intermediate_values[int(row.epochs_done)] == pytest.approx(row.auc)
            state = "COMPLETE" if row.status == "completed" else "PRUNED"
            assert t.state.name == state and t.value == pytest.approx(row.auc)
    # TPE splits its history into good and bad trials: pruned trials are in it, ranked
    # by their learning curves (not all last, as trials without values would be)
    pruned = [
        t
        for label in ("easy", "hard")
        for t in optuna.load_study(study_name=f"asha/{label}/ae", storage=storage).trials
        if t.state.name == "PRUNED"
    ]
    assert pruned and all(t.intermediate_values for t in pruned)

    out = io.StringIO()
    bigger = load_space(str(write_space(tmp_path, body)), ["search.n_trials=5"])
    result = runner.run_study(bigger, runner.RunOptions(
        report=False, progress_interval_s=3600, resume=True, out=out))  # fmt: skip
    assert result.trials_run == 2
    assert "asha: rungs restored from the history of 8 finished trial(s)" in out.getvalue()
