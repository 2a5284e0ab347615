"""Promises of the README and docs/running.md, each run for real on tiny phantoms:

- SIGTERM to the command line while trials run: exit code 130, ``meta.json`` says
  ``interrupted``, the finished rows stay in ``trials.parquet``, the embedded Ray is
  stopped, and ``--resume`` runs the rest (each planned trial finished once, the
  earlier rows unchanged);
- ASHA writes ``early-stopped`` rows (with the metrics of their last evaluation) and a
  resume keeps them as they were, and judges new trials against the restored rungs;
- a ``min`` metric (``recon_error_val_normal``) makes Optuna minimise it and the run's
  best trial the one with the lowest value;
- ``failure.max_failures: 1`` retries a trial that raised once, and it completes; with
  0 the same trial is ``errored`` and the study still finishes.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

import ae4ad
from study.runner import RunOptions, run_study
from study.space import grid_trials, load_space, trial_id

REPO = Path(__file__).resolve().parents[2]
TINY_DATA = {
    "image_size": 32,
    "n_train": 64,
    "n_val": 16,
    "n_test_normal": 16,
    "n_test_abnormal": 16,
}
TINY_AE = {"num_blocks": 3, "hidden_dim": 32}
# the row columns a resume must leave as they were
KEPT_COLUMNS = [
    "trial_id", "status", "error", "epochs_done", "auc", "ap", "train_loss",
    "recon_error_val_normal", "latent_entropy_gaussian", "finished_at", "session",
]  # fmt: skip


def write_space(tmp_path: Path, body: dict) -> Path:
    body = {"storage_path": str(tmp_path / "runs"), **body}
    path = tmp_path / f"{body['name']}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def quiet(**kw) -> RunOptions:
    return RunOptions(report=False, progress_interval_s=3600, **kw)


def read_trials(run_dir: Path) -> pd.DataFrame | None:
    try:
        return pd.read_parquet(run_dir / "trials.parquet")
    except (OSError, ValueError):
        return None


def rows_by_id(trials: pd.DataFrame, ids) -> pd.DataFrame:  # noqa: ANN001
    return trials.set_index("trial_id").loc[list(ids)].reset_index()[KEPT_COLUMNS]


def processes_mentioning(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry))
    return found


def kill_leftovers(marker: str) -> None:
    """SIGKILL the processes whose command line names ``marker`` (the Ray daemons of a
    subprocess's run name their session folder under its RAY_TMPDIR)."""
    for pid in processes_mentioning(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def ray_tmp():
    """A short private temp root for a subprocess's Ray (socket paths must stay short)."""
    root = tempfile.mkdtemp(prefix="rp", dir="/tmp")
    yield root
    kill_leftovers(root)
    shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- SIGTERM


def test_sigterm_exits_130_keeps_finished_rows_and_resume_runs_the_rest(tmp_path, ray_tmp):
    space_path = write_space(
        tmp_path,
        {
            "name": "term",
            # ~1.5 s per trial, one at a time: SIGTERM lands while trials are left
            "datasets": [{"name": "phantom", "params": {**TINY_DATA, "n_train": 256}}],
            "models": [{"name": "ae", "params": {"latent_dim": 2, **TINY_AE}}],
            # trials that differ in lr are never fused: each finishes on its own
            "training": {"epochs": 8, "eval_every": 4, "lr": [1e-3, 2e-3, 3e-3, 4e-3]},
            "seeds": [0],
            "resources": {"max_concurrent_trials": 1},
        },
    )
    space = load_space(str(space_path))
    run_dir = space.run_dir
    planned = {trial_id(c) for c in grid_trials(space)}
    assert len(planned) == 4
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    command = [sys.executable, "run_study.py", "--space", str(space_path), "--no-report",
               "--num-cpus", "2"]  # fmt: skip

    driver = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            trials = read_trials(run_dir)
            if trials is not None and (trials["status"] == "completed").any():
                break
            assert driver.poll() is None, driver.stdout.read()
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.2)
        os.kill(driver.pid, signal.SIGTERM)  # the driver only, as `ray job stop` does
        try:
            output, _ = driver.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            pytest.fail("the driver did not exit within 180 s of SIGTERM")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        if driver.stdout and not driver.stdout.closed:
            driver.stdout.close()

    assert driver.returncode == 130, output
    assert "interrupted" in output
    # the embedded Ray went with the driver: none of its processes is left
    deadline = time.monotonic() + 30
    while processes_mentioning(ray_tmp) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = processes_mentioning(ray_tmp)
    kill_leftovers(ray_tmp)
    assert not left, f"Ray processes still running after the driver exited: {left}"

    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "interrupted"
    assert meta["sessions"][-1]["status"] == "interrupted"
    before = read_trials(run_dir)
    n_before = len(before)
    assert 1 <= n_before < 4, f"{n_before} of 4 trials had finished at SIGTERM"
    # the trials the signal cut short have no row (not errored): they are still to run
    assert (before["status"] == "completed").all(), before[["trial_id", "status", "error"]]
    assert set(before["trial_id"]) <= planned

    second = subprocess.run(
        [*command, "--resume"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300, start_new_session=True,
    )  # fmt: skip
    kill_leftovers(ray_tmp)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{n_before} already finished, {4 - n_before} to run" in second.stdout

    after = read_trials(run_dir)
    assert len(after) == 4 and set(after["trial_id"]) == planned  # each exactly once
    assert (after["status"] == "completed").all()
    pd.testing.assert_frame_equal(
        rows_by_id(after, before["trial_id"]), rows_by_id(before, before["trial_id"]),
        check_dtype=False,
    )  # fmt: skip
    assert set(after.loc[~after["trial_id"].isin(before["trial_id"]), "session"]) == {2}
    history = pd.read_parquet(run_dir / "history.parquet")
    assert history.groupby("trial_id")["epoch"].apply(list).to_dict() == dict.fromkeys(
        planned, [4, 8]
    )
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "finished"
    assert [s["status"] for s in meta["sessions"]] == ["interrupted", "finished"]
    assert meta["sessions"][-1]["trials_already_finished"] == n_before


# --------------------------------------------------------------------------- in-process runs


def test_asha_writes_early_stopped_rows_and_a_resume_keeps_them(tmp_path, ray_session):
    # train_loss after 8 Adam steps falls with the learning rate; one trial at a time
    # in list order, so the first (lr 3e-3) sets the rungs and the small rates stop
    body = {
        "name": "asha-keep",
        "datasets": [{"name": "phantom", "params": TINY_DATA}],
        "models": [{"name": "ae", "params": {"latent_dim": 4, **TINY_AE}}],
        "training": {"epochs": 3, "eval_every": 1, "batch_size": 8,
                     "lr": [3.0e-3, 1.0e-5, 3.0e-5, 1.0e-3]},
        "seeds": [0],
        "scheduler": {"type": "asha", "metric": "train_loss", "grace_period": 1,
                      "reduction_factor": 2},
        "resources": {"max_concurrent_trials": 1},
    }  # fmt: skip
    path = write_space(tmp_path, body)
    space = load_space(str(path))
    result = run_study(space, quiet())
    assert result.status == "finished"
    run_dir = space.run_dir
    first = pd.read_parquet(run_dir / "trials.parquet")
    assert len(first) == 4
    stopped = first[first["status"] == "early-stopped"]
    assert len(stopped) >= 1, first[["lr", "status", "epochs_done", "train_loss"]]
    assert (first["status"] == "completed").any()
    assert (first.loc[first["lr"] == 3.0e-3, "status"] == "completed").all()
    assert (first.loc[first["lr"] == 1.0e-5, "status"] == "early-stopped").all()
    assert (stopped["epochs_done"] < 3).all()
    # an early-stopped row keeps the metrics of its last evaluation
    history = pd.read_parquet(run_dir / "history.parquet")
    for row in stopped.itertuples():
        evaluations = history[history["trial_id"] == row.trial_id].sort_values("epoch")
        assert evaluations["epoch"].tolist() == list(range(1, int(row.epochs_done) + 1))
        last = evaluations.iloc[-1]
        for key in ("auc", "train_loss", "recon_error_val_normal"):
            assert getattr(row, key) == pytest.approx(last[key], rel=1e-12), key

    # resume with one more (even smaller) learning rate: only it runs, the earlier rows
    # stay as they were, and it is judged against the rungs of the first session
    out = io.StringIO()
    bigger = load_space(str(path), ["training.lr=[3.0e-3, 1.0e-5, 3.0e-5, 1.0e-3, 1.0e-6]"])
    again = run_study(bigger, quiet(resume=True, out=out))
    assert again.status == "finished" and again.trials_run == 1
    assert "asha: rungs restored from the history of 4 finished trial(s)" in out.getvalue()
    after = pd.read_parquet(run_dir / "trials.parquet")
    assert len(after) == 5 and after["trial_id"].is_unique
    pd.testing.assert_frame_equal(
        rows_by_id(after, first["trial_id"]), rows_by_id(first, first["trial_id"]),
        check_dtype=False,
    )  # fmt: skip
    new = after[~after["trial_id"].isin(first["trial_id"])].iloc[0]
    assert new["lr"] == 1.0e-6 and new["session"] == 2
    # empty rungs would let it run to the end (the first trial at a rung always goes on)
    assert new["status"] == "early-stopped" and new["epochs_done"] == 1


def test_min_metric_makes_optuna_minimise_and_the_lowest_row_the_best(tmp_path, ray_session):
    body = {
        "name": "minimise",
        "datasets": [{"name": "phantom", "params": TINY_DATA}],
        "models": [{"name": "ae", "params": {"latent_dim": {"int": [1, 16]}, **TINY_AE}}],
        "training": {"epochs": 2, "eval_every": 1, "batch_size": 16,
                     "lr": {"float": [1e-5, 1e-2], "log": True}},
        "seeds": [0],
        "search": {"type": "optuna", "sampler": "random", "n_trials": 4, "seed": 0},
        # no mode: recon_error_val_normal is a min metric
        "scheduler": {"metric": "recon_error_val_normal"},
    }  # fmt: skip
    space = load_space(str(write_space(tmp_path, body)))
    assert space.scheduler.mode == "min"
    result = run_study(space, quiet(keep_models="best"))
    assert result.status == "finished" and result.counts["completed"] == 4
    run_dir = space.run_dir
    trials = pd.read_parquet(run_dir / "trials.parquet")
    values = trials.set_index("trial_id")["recon_error_val_normal"]
    assert values.notna().all() and values.min() < values.max(), values

    study = optuna.load_study(
        study_name="minimise/phantom/ae", storage=f"sqlite:///{run_dir / 'optuna.db'}"
    )
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    for t in study.trials:
        tid = t.user_attrs["trial_id"]
        assert t.value == pytest.approx(values[tid], rel=1e-9), tid
        # every evaluation reached Optuna as an intermediate value of the same metric
        history = pd.read_parquet(run_dir / "history.parquet")
        curve = history[history["trial_id"] == tid].set_index("epoch")["recon_error_val_normal"]
        assert t.intermediate_values == pytest.approx(curve.to_dict(), rel=1e-9)
    lowest = values.idxmin()
    assert study.best_trial.user_attrs["trial_id"] == lowest
    assert study.best_value == pytest.approx(values.min(), rel=1e-9)
    # --keep-models best keeps the lowest row's model, and only that one
    kept = trials.set_index("trial_id")["checkpoint_path"].fillna("")
    assert kept[kept != ""].index.tolist() == [lowest], kept
    assert (run_dir / kept[lowest]).is_file()
    assert sorted(p.stem for p in (run_dir / "models").glob("*.pt")) == [lowest]
    assert ae4ad.load_trained(run_dir, lowest).epoch == 2


# --------------------------------------------------------------------------- retries


class _FailsWhenUnpickled(ae4ad.AnomalyDataset):
    """A phantom whose first ``fail_first`` un-picklings raise. A trial un-pickles its
    data set once per attempt, when it fetches it from Ray's object store (the driver
    only pickles it); each attempt leaves a numbered file in ``attempts_dir``."""

    def __setstate__(self, state: dict) -> None:
        folder, attempt = Path(state["attempts_dir"]), 1
        while True:
            try:
                (folder / f"attempt-{attempt}").open("x").close()
                break
            except FileExistsError:
                attempt += 1
        if attempt <= state["fail_first"]:
            raise RuntimeError(f"injected failure of attempt {attempt}")
        self.__dict__.update(state)


def _phantom_failing(attempts_dir: Path, fail_first: int):
    """A data source: the phantom, as a data set whose first attempts fail."""
    phantom = ae4ad.DATA_SOURCES["phantom"]
    attempts_dir.mkdir()

    @functools.wraps(phantom)  # the same parameters, for the space's check
    def load(**params):  # noqa: ANN202
        data = phantom(**params)
        flaky = _FailsWhenUnpickled.__new__(_FailsWhenUnpickled)
        flaky.__dict__.update(vars(data), attempts_dir=str(attempts_dir), fail_first=fail_first)
        return flaky

    return load


# the attempt counts pin 1 + max_failures; add 0 to the list to also see the default
# (one attempt, errored) on its own, as test_runner's errored trial does
@pytest.mark.parametrize("max_failures", [1])
def test_max_failures_retries_a_trial_that_raised(tmp_path, ray_session, monkeypatch, max_failures):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import it
    attempts = {"once": tmp_path / "once", "always": tmp_path / "always"}
    monkeypatch.setitem(ae4ad.DATA_SOURCES, "phantom_fails_once", _phantom_failing(
        attempts["once"], fail_first=1))  # fmt: skip
    monkeypatch.setitem(ae4ad.DATA_SOURCES, "phantom_fails_always", _phantom_failing(
        attempts["always"], fail_first=100))  # fmt: skip
    path = write_space(
        tmp_path,
        {
            "name": f"retry{max_failures}",
            "datasets": [
                {"name": "phantom_fails_once", "label": "once", "params": TINY_DATA},
                {"name": "phantom_fails_always", "label": "always", "params": TINY_DATA},
            ],
            "models": [{"name": "ae", "params": {"latent_dim": 2, **TINY_AE}}],
            "training": {"epochs": 2, "eval_every": 1},
            "seeds": [0],
            "failure": {"max_failures": max_failures},
        },
    )
    space = load_space(str(path))
    result = run_study(space, quiet())
    assert result.status == "finished"  # failing trials do not fail the study
    # each trial ran once, plus max_failures retries while it kept failing
    tried = {k: sorted(p.name for p in folder.iterdir()) for k, folder in attempts.items()}
    assert tried["once"] == [f"attempt-{i}" for i in range(1, min(2, 1 + max_failures) + 1)]
    assert tried["always"] == [f"attempt-{i}" for i in range(1, 2 + max_failures)]

    trials = pd.read_parquet(space.run_dir / "trials.parquet").set_index("dataset")
    assert sorted(trials.index) == ["always", "once"]
    history_file = space.run_dir / "history.parquet"
    history = pd.read_parquet(history_file) if history_file.is_file() else pd.DataFrame()
    always = trials.loc["always"]
    assert always["status"] == "errored" and pd.isna(always["auc"])
    assert f"injected failure of attempt {1 + max_failures}" in always["error"]
    once = trials.loc["once"]
    if max_failures:
        assert once["status"] == "completed", once["error"]
        assert once["epochs_done"] == 2 and 0 <= once["auc"] <= 1 and pd.isna(once["error"])
        # the retry's evaluations, once each
        assert history["trial_id"].tolist() == [once["trial_id"]] * 2
        assert history["epoch"].tolist() == [1, 2]
        # Tune kept the first attempt's traceback beside the trial
        error_txt = space.run_dir / "tune" / "session-1" / once["trial_id"] / "error.txt"
        assert "injected failure of attempt 1" in error_txt.read_text()
        assert (result.counts.get("completed"), result.counts.get("errored")) == (1, 1)
    else:
        assert once["status"] == "errored", once["error"]
        assert "injected failure of attempt 1" in once["error"]
        assert pd.isna(once["auc"]) and history.empty
        assert (result.counts.get("completed", 0), result.counts.get("errored")) == (0, 2)
