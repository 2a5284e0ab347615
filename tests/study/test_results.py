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


def test_metric_columns_are_the_registry_in_its_order(tmp_path):
    from ae4ad.metrics import METRICS
    from study.results import BEST_METRICS, METRIC_COLUMNS

    registered = [c for c in METRIC_COLUMNS if c in METRICS]
    assert registered == list(METRICS)
    assert [c for c in METRIC_COLUMNS if c not in METRICS] == ["dice_threshold_source"]
    assert (
        METRIC_COLUMNS.index("dice_threshold_source") == METRIC_COLUMNS.index("dice_threshold") + 1
    )
    assert BEST_METRICS == ("auc", "ap", "pixel_ap")
    # every registered metric is a column of trials.parquet, in the registry's order and
    # before the best_* columns, even when no record carries it (None)
    tables = RunTables(tmp_path)
    tables.add_trial(CONFIG, _records(0.8), trial_id="t0", study="s")
    tables.flush()
    columns = list(pd.read_parquet(tmp_path / "trials.parquet").columns)
    assert [c for c in columns if c in METRICS] == list(METRICS)
    assert columns.index("train_loss") < columns.index("best_auc")
    trials = pd.read_parquet(tmp_path / "trials.parquet")
    assert trials["val_auc"].isna().all() and trials.loc[0, "auc"] == 0.8


def test_best_columns_take_the_best_value_in_the_metric_direction(tmp_path, monkeypatch):
    import study.results as results
    from study.results import trial_row

    records = [
        {"epoch": 1, "auc": 0.7, "train_loss": 0.5},
        {"epoch": 2, "auc": 0.9, "train_loss": 0.2},
        {"epoch": 3, "auc": float("nan"), "train_loss": 0.3, "is_final": True},
    ]
    monkeypatch.setattr(results, "BEST_METRICS", ("auc", "train_loss"))
    row = trial_row(CONFIG, records, trial_id="t0", study="s", status="completed")
    assert row["best_auc"] == 0.9  # higher is better; NaN skipped
    assert row["best_train_loss"] == 0.2  # lower is better
    assert row["train_loss"] == 0.3  # the final record's value
