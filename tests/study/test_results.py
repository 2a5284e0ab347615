"""The result tables: a trial added again replaces its rows in every table."""

from __future__ import annotations

import pandas as pd

from study.results import RunTables

CONFIG = {"dataset_label": "toy", "model_label": "ae", "stratum": "toy/ae", "dataset": "phantom",
          "model": "ae", "model_params": {"latent_dim": 4}, "seed": 0}  # fmt: skip


def _records(auc: float) -> list[dict]:
    return [
        {"epoch": 1, "status": "running", "is_final": False, "auc": auc - 0.1},
        {"epoch": 2, "status": "completed", "is_final": True, "auc": auc,
         "scores": [0.1, 0.9], "labels": [0, 1]},
    ]  # fmt: skip


def test_a_trial_added_again_replaces_its_history_and_scores(tmp_path):
    tables = RunTables(tmp_path)
    tables.add_trial(CONFIG, _records(0.6), trial_id="t0", study="s")
    tables.add_trial(CONFIG, _records(0.8), trial_id="t1", study="s")
    tables.add_trial(CONFIG, _records(0.9), trial_id="t0", study="s")  # run again
    tables.flush()
    trials = pd.read_parquet(tmp_path / "trials.parquet").set_index("trial_id")
    history = pd.read_parquet(tmp_path / "history.parquet")
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert trials.loc["t0", "auc"] == 0.9 and len(trials) == 2
    assert history[history["trial_id"] == "t0"]["auc"].tolist() == [0.8, 0.9]
    assert len(history) == 4 and len(scores) == 4
    # and after reading the tables back (a resumed run)
    again = RunTables.load(tmp_path)
    again.add_trial(CONFIG, _records(0.7), trial_id="t1", study="s")
    again.flush()
    history = pd.read_parquet(tmp_path / "history.parquet")
    assert history[history["trial_id"] == "t1"]["auc"].tolist() == [0.6, 0.7]
    assert len(history) == 4 and len(pd.read_parquet(tmp_path / "scores.parquet")) == 4
