"""The models a study keeps and ``predict``: smoke.yaml (with a second, smaller model,
so that there are two strata) runs once; its kept models score the phantom's test
images written by ``export-images`` and reproduce the run's scores and AUC; bad input
is one ``error:`` line and exit code 2; ``--keep-models`` prunes on resume."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from study import runner
from study.cli import main
from study.runner import RunOptions

MODELS = (
    "models=[{name: ae, params: {latent_dim: [2, 16], num_blocks: 3, hidden_dim: 64}},"
    " {name: ae, label: ae-small, params: {latent_dim: 4, num_blocks: 3, hidden_dim: 16}}]"
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    runner.prepare_environment(local=True)
    import ray

    started = runner.start_ray(RunOptions(num_cpus=2))
    storage = tmp_path_factory.mktemp("predict")
    args = ["--space", "smoke", "--override", f"storage_path={storage}", "--override", MODELS]
    try:
        assert main([*args, "--no-report", "--progress-every", "3600"]) == 0
        yield storage / "smoke", args
    finally:
        if started:
            ray.shutdown()


def trials_of(run_dir) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "trials.parquet").set_index("trial_id")


def test_every_trial_keeps_its_final_model_and_no_checkpoint(run_dir):
    run, _ = run_dir
    trials = trials_of(run)
    assert len(trials) == 3 and (trials["status"] == "completed").all()
    assert trials["checkpoint_path"].tolist() == [f"models/{t}.pt" for t in trials.index]
    assert (trials["checkpoint_epoch"] == 2).all() and (trials["resumed_from_epoch"] == 0).all()
    assert sorted(p.stem for p in (run / "models").glob("*.pt")) == sorted(trials.index)
    assert not list((run / "tune").rglob("checkpoint_*"))  # only a resume would need them
    # Tune's experiment state keeps the checkpoints' metrics, without the per-image lists
    state = sum(p.stat().st_size for p in (run / "tune").rglob("experiment_state-*.json"))
    assert state < 3 * 60_000, state
    assert json.loads((run / "meta.json").read_text())["sessions"][-1]["keep_models"] == "all"


def test_predict_reproduces_the_runs_scores_and_auc(run_dir, tmp_path, capsys):
    run, _ = run_dir
    images = tmp_path / "test-images"
    assert main(["export-images", "--run", str(run), "--out", str(images)]) == 0
    assert len(list(images.glob("*.npy"))) == 64
    out = tmp_path / "scored"
    capsys.readouterr()
    argv = ["predict", "--run", str(run), "--trial", "best", str(images), "--out", str(out)]
    assert main([*argv, "--labels", str(images / "labels.csv")]) == 0
    printed = capsys.readouterr().out
    trials = trials_of(run)
    best = trials["auc"].idxmax()
    found = re.search(
        rf"trial {best} \(epoch 2, l2 score\): 64 images scored; auc=(\S+) ap=(\S+)", printed
    )
    assert found, printed
    assert float(found.group(1)) == pytest.approx(trials.loc[best, "auc"], abs=1e-6)
    assert float(found.group(2)) == pytest.approx(trials.loc[best, "ap"], abs=1e-6)

    # per-image scores: the very numbers of the run's evaluation
    scores = pd.read_csv(out / "scores.csv")
    stored = pd.read_parquet(run / "scores.parquet")
    stored = stored[stored["trial_id"] == best].sort_values("index")
    assert scores["trial_id"].eq(best).all() and len(scores) == 64
    assert np.array_equal(scores["score"].to_numpy(), stored["score"].to_numpy())
    assert np.array_equal(scores["label"].to_numpy(), stored["label"].to_numpy())
    summary = json.loads((out / "predict.json").read_text())["trials"][0]
    assert summary["auc"] == pytest.approx(trials.loc[best, "auc"], abs=1e-6)
    maps = sorted((out / "maps" / best).glob("*.png"))
    assert len(maps) == 64 and Image.open(maps[0]).size == (8 * 66, 8 * 32)


def test_predict_best_per_stratum_and_by_trial_id(run_dir, tmp_path, capsys):
    run, _ = run_dir
    images = tmp_path / "png"
    assert main(["export-images", "--run", str(run), "--out", str(images), "--format", "png"]) == 0
    trials = trials_of(run)
    out = tmp_path / "per-stratum"
    assert main(["predict", "--run", str(run), "--trial", "best-per-stratum", str(images),
                 "--out", str(out), "--no-maps"]) == 0  # fmt: skip
    scored = pd.read_csv(out / "scores.csv")
    best = trials.groupby("stratum")["auc"].idxmax()
    assert set(scored["trial_id"]) == set(best) and len(scored) == 2 * 64
    assert not (out / "maps").exists()
    small = trials.index[trials["model"] == "ae-small"][0]
    capsys.readouterr()
    assert main(["predict", "--run", str(run), "--trial", small, str(images / "test_00000.png"),
                 "--out", str(tmp_path / "one")]) == 0  # fmt: skip
    assert f"trial {small} (epoch 2" in capsys.readouterr().out
    one = pd.read_csv(tmp_path / "one" / "scores.csv")
    assert len(one) == 1 and "label" not in one


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_bad_input_is_one_line_naming_the_file(run_dir, tmp_path, capsys):
    run, _ = run_dir
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(good)
    base = ["predict", "--run", str(run), "--out", str(tmp_path / "out")]

    assert main([*base, "--trial", "nope", str(good)]) == 2
    assert "no trial 'nope'" in one_error(capsys)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    assert main([*base, str(tmp_path / "broken.png")]) == 2
    assert "broken.png: cannot read the image" in one_error(capsys)
    colour = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    assert main([*base, str(good), str(tmp_path / "colour.png")]) == 2
    assert "colour.png: 3 channels (RGB), but the model takes 1 channel" in one_error(capsys)
    assert main([*base, str(tmp_path / "missing.png")]) == 2
    assert "missing.png: no such file or folder" in one_error(capsys)
    (tmp_path / "labels.csv").write_text("file,label\nother.png,1\n")
    assert main([*base, str(good), "--labels", str(tmp_path / "labels.csv")]) == 2
    assert "good.png: no label for it in" in one_error(capsys)
    assert main(["predict", "--run", str(tmp_path), "--out", "x", str(good)]) == 2
    assert "not a run folder" in one_error(capsys)


def test_report_shows_disk_used(run_dir):
    from study.report import write_report

    run, _ = run_dir
    html = write_report(run).read_text(encoding="utf-8")
    assert "disk used" in html and "models" in html


def test_keep_models_on_resume_prunes_to_best_then_none(run_dir, tmp_path, capsys):
    run, args = run_dir
    assert main([*args, "--resume", "--no-report", "--keep-models", "best"]) == 0
    trials = trials_of(run)
    best = set(trials.groupby("stratum")["auc"].idxmax())
    kept = trials["checkpoint_path"].dropna()
    assert set(kept.index) == best and len(best) == 2
    assert {p.stem for p in (run / "models").glob("*.pt")} == best
    assert main([*args, "--resume", "--no-report", "--keep-models", "none"]) == 0
    assert trials_of(run)["checkpoint_path"].isna().all()
    assert not list((run / "models").glob("*.pt"))
    capsys.readouterr()
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(good)
    assert main(["predict", "--run", str(run), "--out", str(tmp_path / "o"), str(good)]) == 2
    assert "has no kept model" in one_error(capsys)


def test_model_keeper_best_keeps_one_per_stratum_as_trials_finish(tmp_path):
    """ModelKeeper alone (no Ray): fake Tune checkpoints in a local folder."""
    import pyarrow.fs as pafs

    from study.checkpoints import ModelKeeper, default_keep_models, find_resume_checkpoints
    from study.results import RunTables

    class Checkpoint:  # what Tune's trial.checkpoint offers: a file system and a path
        def __init__(self, path):
            self.filesystem, self.path = pafs.LocalFileSystem(), str(path)

    tune = tmp_path / "run" / "tune"
    tables = RunTables(tmp_path / "run")
    keeper = ModelKeeper(tables, "best", "auc", "max", str(tune))
    config = {"dataset_label": "p", "model_label": "ae", "stratum": "p/ae", "model_params": {}}
    order = [("a", "p/ae", 0.6), ("b", "p/ae", 0.8), ("c", "p/vae", 0.5), ("d", "p/ae", 0.7)]
    for tid, stratum, auc in order:
        folder = tune / "session-1" / tid / "checkpoint_000001"
        folder.mkdir(parents=True)
        (folder / "model.pt").write_bytes(tid.encode())
        (folder / "training_state.pt").write_bytes(b"state")
        (folder / "records.json").write_text(json.dumps([{"epoch": 1}, {"epoch": 4}]))
        record = {"epoch": 4, "status": "completed", "is_final": True, "auc": auc}
        tables.add_trial({**config, "stratum": stratum}, [record], trial_id=tid, study="s")
        assert find_resume_checkpoints(str(tune)) == {tid: [str(folder)]}
        keeper.finished(tid, Checkpoint(folder))
        assert not folder.exists()  # a finished trial's checkpoints are gone
    kept = {r["trial_id"]: r["checkpoint_path"] for r in tables.rows() if r["checkpoint_path"]}
    assert kept == {"b": "models/b.pt", "c": "models/c.pt"}
    assert (tmp_path / "run" / "models" / "b.pt").read_bytes() == b"b"
    assert sorted(p.name for p in (tmp_path / "run" / "models").iterdir()) == ["b.pt", "c.pt"]
    assert tables.get("b")["checkpoint_epoch"] == 4 and tables.get("a")["checkpoint_epoch"] is None
    assert default_keep_models(100) == "all" and default_keep_models(101) == "best"
