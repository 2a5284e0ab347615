"""Recovery mid-trial from Ray Tune checkpoints (fault injection):

(a) a running trial's worker process is killed (SIGKILL, by its pid) and Tune, with
    ``failure.max_failures: 1``, restarts it from its last checkpoint: its history has
    every evaluation once, the restart's records say ``resumed_from_epoch`` > 0, and
    its final record equals a clean run's (same seed, same thread count) exactly;
(b) the driver is killed (``kill -9`` of its process group) while trials run, then
    ``--resume`` continues the unfinished trials from their last checkpoints (epoch >
    0 at restart) and they end with the clean run's numbers;
(c) checkpoints in a ``file://`` URI storage (a second folder standing for S3/GCS) on
    a two-node cluster; the models still land in the run folder.

Tolerance: on the same machine with the trial's thread count, a resumed trial's
metrics equal the uninterrupted run's bit for bit (measured: every difference is 0.0);
the tests allow 1e-9 so that a platform whose kernels are not run-to-run deterministic
fails loudly rather than by a hair.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import ae4ad
from study import runner, tuner
from study.results import read_meta
from study.runner import RunOptions, run_study
from study.space import fit_config, grid_trials, load_space, trial_id

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_resume import stop_leftovers  # noqa: E402
from test_runner import TINY_AE, TINY_DATA  # noqa: E402

TOLERANCE = 1e-9
COMPARED = (
    "auc", "ap", "pixel_ap", "pixel_auc", "best_dice", "train_loss", "mean_score_normal",
    "mean_score_abnormal", "recon_error_train_normal", "recon_error_val_normal",
    "recon_error_test_normal", "recon_error_test_abnormal", "latent_entropy_gaussian",
    "latent_effective_rank", "latent_participation_ratio",
)  # fmt: skip


def write_space(tmp_path: Path, body: dict) -> Path:
    body = {"storage_path": str(tmp_path / "runs"), **body}
    path = tmp_path / f"{body['name']}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def clean_final_record(config: dict) -> dict:
    """The final record of the same trial trained without interruption, in this
    process, with the trial's thread count."""
    threads = __import__("torch").get_num_threads()
    try:
        return list(ae4ad.fit(fit_config(config)))[-1]
    finally:
        __import__("torch").set_num_threads(threads)


def assert_same_numbers(row: dict, clean: dict) -> None:
    for key in COMPARED:
        a, b = row.get(key), clean.get(key)
        if isinstance(b, float) and math.isnan(b):
            assert a is None or math.isnan(a), key
            continue
        assert a == pytest.approx(b, abs=TOLERANCE, rel=0), key


@pytest.fixture
def ray_session():
    runner.prepare_environment(local=True)
    import ray

    started = runner.start_ray(RunOptions(num_cpus=2))
    yield ray
    if started:
        ray.shutdown()


# --------------------------------------------------------------------------- (a)


def test_killed_worker_continues_from_its_last_checkpoint(tmp_path, ray_session, monkeypatch):
    path = write_space(
        tmp_path,
        {
            "name": "killworker",
            "datasets": [{"name": "phantom", "params": {**TINY_DATA, "n_train": 256}}],
            "models": [{"name": "ae", "params": {"latent_dim": 3, **TINY_AE}}],
            "training": {"epochs": 8, "eval_every": 2},
            "seeds": [0],
            "failure": {"max_failures": 1},
        },
    )
    space = load_space(str(path))
    seen: dict = {}
    killed: dict = {}
    original = tuner.Collector.result

    def result_and_look(self, trial, result):
        original(self, trial, result)
        seen.setdefault("trial", trial)
        seen.setdefault("pid", result["pid"])  # the worker process running the trial

    def kill_once_checkpointed():
        # like a lost node: at any moment once Tune has registered a checkpoint
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            checkpoint = getattr(seen.get("trial"), "checkpoint", None)
            if checkpoint is not None:
                records = json.loads(Path(checkpoint.path, "records.json").read_text())
                killed.update(pid=seen["pid"], epoch=int(records[-1]["epoch"]))
                os.kill(seen["pid"], signal.SIGKILL)
                return
            time.sleep(0.02)

    monkeypatch.setattr(tuner.Collector, "result", result_and_look)
    killer = threading.Thread(target=kill_once_checkpointed, daemon=True)
    killer.start()
    out = run_study(space, RunOptions(report=False, progress_interval_s=3600))
    killer.join(timeout=5)
    assert killed and out.status == "finished" and out.counts["completed"] == 1
    assert killed["epoch"] < 8, "the trial finished before the kill"

    history = pd.read_parquet(space.run_dir / "history.parquet")
    assert history["epoch"].tolist() == [2, 4, 6, 8]  # no evaluation twice, none lost
    # the restart continued from the checkpoint Tune had when the worker died, not 0
    expected = [0 if e <= killed["epoch"] else killed["epoch"] for e in (2, 4, 6, 8)]
    assert history["resumed_from_epoch"].tolist() == expected
    assert killed["epoch"] > 0

    row = pd.read_parquet(space.run_dir / "trials.parquet").iloc[0].to_dict()
    assert row["status"] == "completed" and row["checkpoint_epoch"] == 8
    assert_same_numbers(row, clean_final_record(grid_trials(space)[0]))
    assert not list((space.run_dir / "tune").rglob("checkpoint_*"))  # finished: cleaned up


# --------------------------------------------------------------------------- (b)


def latest_checkpoint_epoch(tune_dir: Path) -> int:
    best = 0
    for records in tune_dir.glob("session-*/*/checkpoint_*/records.json"):
        try:
            best = max(best, int(json.loads(records.read_text())[-1]["epoch"]))
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return best


def test_killed_driver_then_resume_continues_from_checkpoints(tmp_path):
    ray_tmp = f"/tmp/rr{os.getpid()}"
    os.makedirs(ray_tmp, exist_ok=True)
    path = write_space(
        tmp_path,
        {
            "name": "killdriver",
            "datasets": [{"name": "phantom", "params": {**TINY_DATA, "n_train": 256}}],
            "models": [{"name": "ae", "params": {"latent_dim": [2, 5], **TINY_AE}}],
            "training": {"epochs": 16, "eval_every": 2},
            "seeds": [0],
        },
    )
    space = load_space(str(path))
    run_dir = space.run_dir
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    # --num-gpus 0: CPU numbers, also on a machine with GPUs
    command = [sys.executable, "run_study.py", "--space", str(path), "--no-report",
               "--num-cpus", "2", "--num-gpus", "0"]  # fmt: skip
    try:
        first = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while latest_checkpoint_epoch(run_dir / "tune") < 4:
                assert first.poll() is None, first.stdout.read().decode()
                assert time.monotonic() < deadline, "no checkpoint in time"
                time.sleep(0.2)
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # kill -9 the driver and its Ray
            first.wait()
            first.stdout.close()
        time.sleep(1)
        stop_leftovers(ray_tmp)
        assert not (run_dir / "trials.parquet").is_file(), "a trial finished before the kill"
        at_kill = latest_checkpoint_epoch(run_dir / "tune")
        assert at_kill >= 4

        second = subprocess.run(
            [*command, "--resume"], cwd=REPO, env=env, capture_output=True, text=True,
            timeout=400, start_new_session=True,
        )  # fmt: skip
    finally:
        stop_leftovers(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "continue from their last checkpoint" in second.stdout, second.stdout

    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "completed").all()
    history = pd.read_parquet(run_dir / "history.parquet")
    for tid, h in history.groupby("trial_id"):
        assert h["epoch"].tolist() == list(range(2, 18, 2)), tid  # each evaluation once
        restart = h["resumed_from_epoch"].max()
        assert restart > 0, f"{tid} restarted from scratch"  # epoch > 0 at restart
        # records of the first session (from the checkpoint) and of the second
        assert set(h["resumed_from_epoch"]) == {0, restart}
        assert (h.loc[h["epoch"] > restart, "resumed_from_epoch"] == restart).all()
    resumed_max = int(history["resumed_from_epoch"].max())
    assert resumed_max == at_kill or resumed_max >= 4
    configs = {trial_id(c): c for c in grid_trials(space)}
    for row in trials.to_dict("records"):
        assert_same_numbers(row, clean_final_record(configs[row["trial_id"]]))
    meta = read_meta(run_dir)
    assert meta["status"] == "finished" and len(meta["sessions"]) == 2
    assert not list((run_dir / "tune").rglob("checkpoint_*"))
    assert sorted(p.stem for p in (run_dir / "models").glob("*.pt")) == sorted(configs)


# --------------------------------------------------------------------------- (c)


def test_file_uri_storage_on_a_two_node_cluster(tmp_path, monkeypatch):
    runner.prepare_environment(local=True)
    import ray
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized()
    path = write_space(
        tmp_path,
        {
            "name": "uri",
            "datasets": [{"name": "phantom", "params": TINY_DATA}],
            "models": [{"name": "ae", "params": {"latent_dim": [2, 4, 8, 16], **TINY_AE}}],
            "training": {"epochs": 2, "eval_every": 1},
            "seeds": [0],
            "resources": {"fuse": "off"},  # a Tune trial (and checkpoint) per config
        },
    )
    # A URI storage path (s3://, gs://) sends Tune's checkpoints there while the tables
    # and models go to ./runs/<name>; a file:// URI into a second folder stands for the
    # bucket (the schema reads a written file:// as a plain folder, so it is set here).
    monkeypatch.chdir(tmp_path)
    remote = tmp_path / "remote-bucket"
    space = load_space(str(path)).model_copy(update={"storage_path": f"file://{remote}"})
    assert space.storage_is_uri and space.run_dir == tmp_path / "runs" / "uri"
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 1}}
    )
    seen: list[str] = []
    original = tuner.Collector.finish

    def finish_and_look(self, trial, error):
        checkpoint = getattr(trial, "checkpoint", None)
        seen.append(str(checkpoint.path) if checkpoint is not None else "")
        original(self, trial, error)

    try:
        cluster.add_node(num_cpus=1, resources={"node_b": 1})
        cluster.wait_for_nodes()
        node_ids = {node.node_id for node in cluster.list_all_nodes()}
        tuner.Collector.finish = finish_and_look
        result = run_study(
            space, RunOptions(address=cluster.address, report=False, progress_interval_s=3600)
        )
    finally:
        tuner.Collector.finish = original
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    assert result.status == "finished" and result.counts["completed"] == 4
    trials = pd.read_parquet(space.run_dir / "trials.parquet")
    # the trials ran on the cluster's nodes; Ray places them (usually on both, but with
    # 0.2 s trials one node may take all four, so that is not asserted)
    assert set(trials["node_id"]) <= node_ids and trials["node_id"].notna().all()
    # Tune wrote the checkpoints into the "remote" storage, under <name>/tune
    assert len(seen) == 4 and all(p.startswith(str(remote / "uri" / "tune")) for p in seen)
    assert (remote / "uri" / "tune" / "session-1").is_dir()
    assert not list(remote.rglob("checkpoint_*"))  # finished: cleaned up there too
    # and the kept models are in the local run folder, loadable
    assert trials["checkpoint_path"].notna().all() and (trials["checkpoint_epoch"] == 2).all()
    for tid in trials["trial_id"]:
        assert ae4ad.load_trained(space.run_dir, tid).epoch == 2


# --------------------------------------------------------------------------- (d)


def latest_member_epochs(tune_dir: Path) -> dict[str, int]:
    """The latest checkpointed epoch of each member of a fused bundle's checkpoints."""
    found: dict[str, int] = {}
    for records in tune_dir.glob("session-*/*/checkpoint_*/*/records.json"):
        try:
            epoch = int(json.loads(records.read_text())[-1]["epoch"])
        except (OSError, ValueError, KeyError, IndexError):
            continue
        member = records.parent.name
        found[member] = max(found.get(member, 0), epoch)
    return found


def test_killed_fused_run_resumes_every_member_from_its_own_state(tmp_path):
    """A bundle of 3 members; the driver killed (SIGKILL, process group) mid-bundle, then
    --resume: every member continues alone from its state in the bundle's checkpoint.
    Each evaluation is once in the history, every model is kept, each final record is
    the in-process "bundle to epoch e, then the member alone" bit for bit, and the final
    AUCs agree with an uninterrupted fused run within float32 noise (measured here as in
    tests/test_fused.py: fused against separate runs, times NOISE_FACTOR)."""
    import numpy as np

    sys.path.insert(0, str(REPO / "tests"))
    from test_fused import NOISE_FACTOR, ranking_range

    from ae4ad.fused import fit_many

    ray_tmp = f"/tmp/rf{os.getpid()}"
    os.makedirs(ray_tmp, exist_ok=True)
    path = write_space(
        tmp_path,
        {
            "name": "killfused",
            "datasets": [{"name": "phantom", "params": {**TINY_DATA, "n_train": 256}}],
            "models": [{"name": "ae", "params": {"latent_dim": [1, 2, 4], **TINY_AE}}],
            "training": {"epochs": 10, "eval_every": 2},
            "seeds": [0],
            "resources": {"fuse": 3},
        },
    )
    space = load_space(str(path))
    run_dir = space.run_dir
    configs = {trial_id(c): c for c in grid_trials(space)}
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    command = [sys.executable, "run_study.py", "--space", str(path), "--no-report",
               "--num-cpus", "2", "--keep-models", "all"]  # fmt: skip
    try:
        first = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while len(latest_member_epochs(run_dir / "tune")) < 3:
                assert first.poll() is None, first.stdout.read().decode()
                assert time.monotonic() < deadline, "no bundle checkpoint in time"
                time.sleep(0.2)
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # kill -9 the driver and its Ray
            first.wait()
            first.stdout.close()
        time.sleep(1)
        stop_leftovers(ray_tmp)
        assert not (run_dir / "trials.parquet").is_file(), "the bundle finished before the kill"
        at_kill = latest_member_epochs(run_dir / "tune")
        assert sorted(at_kill) == sorted(configs) and min(at_kill.values()) >= 2

        second = subprocess.run(
            [*command, "--resume"], cwd=REPO, env=env, capture_output=True, text=True,
            timeout=400, start_new_session=True,
        )  # fmt: skip
    finally:
        stop_leftovers(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "continue from their last checkpoint" in second.stdout, second.stdout
    assert "warning" not in second.stdout, second.stdout

    trials = pd.read_parquet(run_dir / "trials.parquet").set_index("trial_id")
    assert sorted(trials.index) == sorted(configs) and (trials["status"] == "completed").all()
    history = pd.read_parquet(run_dir / "history.parquet")
    resumed = {}
    for tid, h in history.groupby("trial_id"):
        assert h["epoch"].tolist() == list(range(2, 12, 2)), tid  # each evaluation once
        resumed[tid] = int(h["resumed_from_epoch"].max())
        assert resumed[tid] >= 2, f"{tid} restarted from scratch"
    assert sorted(p.stem for p in (run_dir / "models").glob("*.pt")) == sorted(configs)
    assert not list((run_dir / "tune").rglob("checkpoint_*"))

    # in this process: the bundle uninterrupted, its states, and separate runs
    ids = list(configs)
    data = ae4ad.load_dataset("phantom", **space.datasets[0].params)
    threads = __import__("torch").get_num_threads()
    states: dict[tuple[int, int], dict] = {}
    try:
        fused = {ids[i]: r for i, r in fit_many(
            [fit_config(configs[t]) for t in ids], dataset=data,
            state_out=lambda i, s, r: states.__setitem__((i, s["epoch"]), s),
        ) if r.get("is_final")}  # fmt: skip
        for i, tid in enumerate(ids):  # the bundle to its checkpoint, then the member alone
            state = states[(i, resumed[tid])]
            final = list(ae4ad.fit(fit_config(configs[tid]), dataset=data, start_state=state))
            assert_same_numbers(trials.loc[tid].to_dict(), final[-1])
        separate = {t: clean_final_record(configs[t]) for t in ids}
    finally:
        __import__("torch").set_num_threads(threads)
    scores = pd.read_parquet(run_dir / "scores.parquet")
    relative = lambda a, b: float(np.max(np.abs(np.subtract(a, b)) / np.abs(b)))  # noqa: E731
    noise = max(relative(separate[t]["scores"], fused[t]["scores"]) for t in ids)
    labels = data.test_labels.numpy()
    for tid in ids:
        mine = scores[scores["trial_id"] == tid].sort_values("index")["score"].to_numpy()
        assert relative(mine, fused[tid]["scores"]) <= NOISE_FACTOR * noise, tid
        bounds = ranking_range(fused[tid]["scores"], labels, NOISE_FACTOR * noise)
        low, high = bounds["auc"]
        assert low - 1e-12 <= trials.loc[tid, "auc"] <= high + 1e-12, (tid, low, high)
