"""The report of a searched study with early stopping: one stratum whose every trial was
stopped at its first evaluation, Optuna studies with pruned and failed trials. The
header counts the planned strata, the learning curves draw single evaluations, the
Optuna history shows every trial, and the objective's dependence on latent_dim is
drawn per stratum."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from study.report import load_run, render_report

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
from tests.helpers.synthetic import make_synthetic_run  # noqa: E402

FAST = dict(n_boot=200, n_sim=1000)
DIMS = (2, 4, 8, 16, 32, 64)


def searched_run(root: Path) -> Path:
    """A synthetic run of two strata: ``easy/ae`` completed, every ``hard/ae`` trial
    early-stopped after its first evaluation (epoch 10 of 50), plus optuna.db."""
    run = make_synthetic_run(
        root / "search", datasets=("easy", "hard"), latent_dims=DIMS, seeds=(0,)
    )
    trials = pd.read_parquet(run / "trials.parquet")
    hard = trials["dataset"] == "hard"
    trials.loc[hard, "status"] = "early-stopped"
    trials.loc[hard, "epochs_done"] = 10
    trials.to_parquet(run / "trials.parquet")
    history = pd.read_parquet(run / "history.parquet")
    hard_ids = set(trials.loc[hard, "trial_id"])
    keep = ~history["trial_id"].isin(hard_ids) | (history["epoch"] == 10)
    history[keep].to_parquet(run / "history.parquet")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{run / 'optuna.db'}"
    dist = {
        "model.latent_dim": optuna.distributions.IntDistribution(1, 256, log=True),
        "training.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
    }
    rng = np.random.default_rng(0)
    for label in ("easy", "hard"):
        study = optuna.create_study(
            study_name=f"search/{label}/ae", storage=url, direction="maximize"
        )
        study.set_user_attr("stratum", f"{label}/ae")
        rows = trials[trials["dataset"] == label]
        for r in rows.itertuples():
            params = {
                "model.latent_dim": int(r.latent_dim),
                "training.lr": float(rng.uniform(1e-4, 1e-2)),
            }
            if label == "easy":
                study.add_trial(
                    optuna.trial.create_trial(
                        params=params, distributions=dist, value=float(r.auc),
                        intermediate_values={10: float(r.auc) - 0.1, 50: float(r.auc)},
                    )
                )  # fmt: skip
            else:
                study.add_trial(
                    optuna.trial.create_trial(
                        params=params, distributions=dist, state=optuna.trial.TrialState.PRUNED,
                        intermediate_values={10: 0.6 + 0.01 * r.latent_dim / 8},
                    )
                )  # fmt: skip
        if label == "hard":  # one failed (diverged) trial: no value
            study.add_trial(
                optuna.trial.create_trial(
                    params={"model.latent_dim": 128, "training.lr": 9e-3},
                    distributions=dist,
                    state=optuna.trial.TrialState.FAIL,
                )
            )
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[str, int]:
    run = searched_run(tmp_path_factory.mktemp("runs"))
    return render_report(load_run(run), validate=True, **FAST)


def figures(text: str) -> list[dict]:
    """The data and layout of every figure of the page."""
    decoder, out = json.JSONDecoder(), []
    for m in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', text):
        data, end = decoder.raw_decode(text, m.end())
        start = re.compile(r",\s*").match(text, end).end()
        layout, _ = decoder.raw_decode(text, start)
        out.append({"data": data, "layout": layout})
    return out


def figure_titled(text: str, start: str) -> dict:
    found = [
        f for f in figures(text) if f["layout"].get("title", {}).get("text", "").startswith(start)
    ]
    assert len(found) == 1, [f["layout"].get("title") for f in figures(text)]
    return found[0]


def test_header_counts_the_planned_strata(report):
    text, _ = report
    header = text[text.index("<header") : text.index("</header>")]
    assert re.search(r"6 completed of 12 trials · 2\s+strata", header), header


def test_learning_curves_draw_single_evaluations_as_markers(report):
    text, _ = report
    fig = figure_titled(text, "Learning curves")
    dots = [t for t in fig["data"] if t.get("mode") == "markers"]
    assert sum(len(t["x"]) for t in dots) == len(DIMS)  # every hard trial, one dot each
    assert all(x == 10 for t in dots for x in t["x"])
    assert {t["xaxis"] for t in dots} == {"x2"}  # the hard stratum's panel
    assert fig["layout"]["xaxis2"]["range"][1] >= 50  # the axis spans the planned epochs
    assert "A trial with a single evaluation" in text


def test_optuna_history_shows_every_trial(report):
    text, _ = report
    fig = figure_titled(text, "Optuna search per stratum")
    hard = [t for t in fig["data"] if t.get("xaxis") == "x3" and t["type"] == "scatter"]
    by_name = {t["name"]: len(t["x"]) for t in hard}
    assert by_name["early-stopped (value at its last evaluation)"] == len(DIMS)
    assert by_name["failed or stopped without a value (drawn at the bottom)"] == 1
    assert "search/hard/ae: 7 trials: 0 completed, 6 early-stopped, 1 failed" in text
    assert "search/easy/ae: 6 trials: 6 completed, 0 early-stopped" in text


def test_latent_dependence_per_stratum(report):
    text, _ = report
    assert "id='latent-dependence'" in text
    fig = figure_titled(text, "AUC against latent_dim in the search")
    names = {(t["xaxis"], t["name"]) for t in fig["data"]}
    assert ("x", "partial dependence (completed trials)") in names
    assert ("x2", "early-stopped (value at its last evaluation)") in names
    assert ("x2", "partial dependence (completed trials)") not in names
    assert fig["layout"]["xaxis"]["type"] == "log"
    assert "hard/ae: 0 completed trial(s) over 0 latent_dim value(s): no partial" in text
    pd_trace = next(t for t in fig["data"] if t["name"].startswith("partial dependence"))
    peak = pd_trace["x"][int(np.nanargmax(pd_trace["y"]))]
    assert 2 <= peak <= 32  # the synthetic inverted U peaks inside the range


def test_grid_study_has_no_latent_dependence(tmp_path):
    run = make_synthetic_run(tmp_path / "grid", datasets=("toy",), latent_dims=(2, 4), seeds=(0,))
    text, _ = render_report(load_run(run), **FAST)
    assert "latent-dependence" not in text
    assert re.search(r"· 1\s+stratum", text)


SEARCHED = {
    "model.latent_dim": optuna.distributions.IntDistribution(1, 256, log=True),
    "model.hidden_dim": optuna.distributions.CategoricalDistribution([256, 512, 1024]),
    "model.base_width": optuna.distributions.CategoricalDistribution([8, 16, 32]),
    "training.lr": optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True),
}


def importance_run(root: Path, matters: str, n_done: int = 24, n_pruned: int = 0) -> Path:
    """A searched run of one stratum (``toy/ae``) whose objective (``val_auc``) depends on
    the parameter ``matters`` only (plus noise of sd 0.005): one Optuna trial per row of
    trials.parquet, linked by its trial_id; the objective is not the test AUC."""
    run = make_synthetic_run(
        root / f"imp-{matters}-{n_done}", datasets=("toy",),
        latent_dims=(2, 4, 8, 16, 32, 64), seeds=range(4), examples=False,
    )  # fmt: skip
    space = yaml.safe_load((run / "space.yaml").read_text())
    space["search"] = {"type": "optuna", "n_trials": n_done}
    space["scheduler"] = {"type": "asha", "metric": "val_auc", "mode": "max"}
    (run / "space.yaml").write_text(yaml.safe_dump(space))
    trials = pd.read_parquet(run / "trials.parquet").head(n_done)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="imp/toy/ae", storage=f"sqlite:///{run / 'optuna.db'}", direction="maximize"
    )
    study.set_user_attr("stratum", "toy/ae")
    rng = np.random.default_rng(1)
    for r in trials.itertuples():
        params = {
            "model.latent_dim": int(r.latent_dim),
            "model.hidden_dim": int(rng.choice([256, 512, 1024])),
            "model.base_width": int(rng.choice([8, 16, 32])),
            "training.lr": float(np.exp(rng.uniform(np.log(1e-4), np.log(3e-3)))),
        }
        x = {
            "model.latent_dim": (np.log2(params["model.latent_dim"]) - 3.5) / 2.5,
            "training.lr": (np.log10(params["training.lr"]) + 3.3) / 0.75,
        }[matters]
        value = 0.9 - 0.1 * x**2 + 0.005 * rng.normal()
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=SEARCHED, value=value,
                user_attrs={"trial_id": r.trial_id}, intermediate_values={10: value - 0.05},
            )
        )  # fmt: skip
    for j in range(n_pruned):
        study.add_trial(
            optuna.trial.create_trial(
                params={"model.latent_dim": 4, "model.hidden_dim": 256, "model.base_width": 8,
                        "training.lr": 1e-3},
                distributions=SEARCHED, state=optuna.trial.TrialState.PRUNED,
                intermediate_values={10: 0.5 + 0.01 * j},
            )
        )  # fmt: skip
    return run


@pytest.mark.parametrize("matters", ["model.latent_dim", "training.lr"])
def test_importance_finds_the_one_parameter_that_matters(tmp_path, matters):
    [imp] = load_run(importance_run(tmp_path, matters)).importance()
    assert imp.stratum == "toy/ae" and imp.evaluator == "fANOVA" and imp.n_completed == 24
    assert max(imp.importances, key=imp.importances.get) == matters
    assert imp.importances[matters] > 0.5
    assert sum(imp.importances.values()) == pytest.approx(1.0)
    assert set(imp.importances) == set(SEARCHED)


def test_other_evaluators_agree(tmp_path):
    run = load_run(importance_run(tmp_path, "training.lr"))
    for name, label in (("ped-anova", "PED-ANOVA"), ("mean-decrease-impurity", "mean decrease")):
        [imp] = run.importance(name)
        assert imp.evaluator.startswith(label)
        assert max(imp.importances, key=imp.importances.get) == "training.lr"
    with pytest.raises(ValueError, match="unknown importance evaluator 'shap'; allowed: fanova"):
        run.importance("shap")


def test_importance_needs_the_stated_minimum_of_completed_trials(tmp_path):
    from study.report.searched import MIN_IMPORTANCE_TRIALS as MIN

    few = importance_run(tmp_path, "model.latent_dim", n_done=MIN - 1, n_pruned=0)
    [imp] = load_run(few).importance()
    assert not imp.available and imp.n_completed == MIN - 1 and imp.epoch is None
    assert (
        imp.reason
        == f"the minimum is {MIN} completed trials, or as many evaluated at a common epoch"
    )
    assert imp.text() == (
        f"fANOVA over {MIN - 1} completed trial(s): not available (the minimum is {MIN} "
        "completed trials, or as many evaluated at a common epoch)"
    )
    text, _ = render_report(load_run(few), validate=True, **FAST)
    fig = figure_titled(text, "Optuna search per stratum")
    [said] = [a for a in fig["layout"]["annotations"] if a["text"].startswith("not available")]
    assert said["xref"] == "paper"  # in the importance panel, which has no trace
    domain = fig["layout"]["xaxis2"]["domain"]
    assert domain[0] < said["x"] < domain[1]
    [imp] = load_run(importance_run(tmp_path, "model.latent_dim", n_done=MIN)).importance()
    assert imp.available and imp.n_completed == MIN


def test_grid_run_has_no_importance(tmp_path):
    run = make_synthetic_run(tmp_path / "grid", datasets=("toy",), latent_dims=(2, 4), seeds=(0,))
    assert load_run(run).importance() == [] and load_run(run).search() == []


def test_search_section_and_console_say_what_the_search_found(tmp_path):
    from study.report import verdict_lines, write_report

    run_dir = importance_run(tmp_path, "model.latent_dim", n_pruned=3)
    run = load_run(run_dir)
    [found] = run.search()
    trials = run.trials.set_index("trial_id")
    best = found.best
    assert best.objective == "val_auc" and best.params["model.latent_dim"] in DIMS
    assert best.test_auc == pytest.approx(float(trials.loc[best.trial_id, "auc"]))
    study = optuna.load_study(study_name="imp/toy/ae", storage=f"sqlite:///{run_dir}/optuna.db")
    assert best.number == study.best_trial.number and best.value == study.best_value
    assert found.counts == {"completed": 24, "stopped": 3, "failed": 0}

    text, _ = render_report(run, validate=True, **FAST)
    section = text[text.index("id='search-found'") :]
    assert f"{best.number} ({best.trial_id})" in section
    assert f"<td>{best.test_auc:.3f}</td>" in section
    assert "fANOVA over 24 completed trial(s): latent_dim" not in section  # full names
    assert "fANOVA over 24 completed trial(s): model.latent_dim" in section
    fig = figure_titled(text, "Optuna search per stratum")
    assert fig["layout"]["annotations"][1]["text"] == "importance (fANOVA, 24 completed)"
    bars = [t for t in fig["data"] if t["type"] == "bar"]
    assert bars[0]["y"][-1] == "model.latent_dim"  # the longest bar on top
    slice_fig = figure_titled(text, "validation AUC against latent_dim in the search")
    n_points = sum(len(t["x"]) for t in slice_fig["data"] if t.get("mode") == "markers")
    assert n_points == 27  # every completed and pruned trial

    write_report(run_dir, **FAST)
    lines = [ln for ln in verdict_lines(run_dir) if ln.startswith("search ")]
    assert lines == [found.line()]
    assert lines[0].startswith(f"search toy/ae: best completed trial {best.number} (")
    assert f"val_auc {best.value:.3f}, test AUC {best.test_auc:.3f}" in lines[0]
    assert "(27 trials, 24 completed, 3 stopped); importance: fANOVA over 24" in lines[0]


def test_few_completed_trials_get_importances_at_the_latest_common_epoch(tmp_path):
    """An early-stopping search with fewer completed trials than the minimum: the
    importance is measured over completed and stopped trials at the latest epoch that at
    least the minimum reached, on the objective there, and says so."""
    from study.report.searched import MIN_IMPORTANCE_TRIALS as MIN

    run = importance_run(tmp_path, "model.latent_dim", n_done=MIN - 3, n_pruned=5)
    [imp] = load_run(run).importance()
    assert imp.n_completed == MIN - 3  # pruned trials are not completed ones
    assert imp.available and imp.epoch == 10 and imp.n_used == MIN - 3 + 5
    assert imp.text().startswith(
        f"fANOVA over {MIN + 2} trials at epoch 10, the objective there (completed and "
        f"stopped trials; {MIN - 3} completed, fewer than {MIN}): "
    )
    assert set(imp.importances) == set(SEARCHED)
    text, _ = render_report(load_run(run), validate=True, **FAST)
    fig = figure_titled(text, "Optuna search per stratum")
    assert (
        fig["layout"]["annotations"][1]["text"]
        == f"importance (fANOVA, {MIN + 2} trials at epoch 10)"
    )
