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
