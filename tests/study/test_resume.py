"""Resume after kill -9: run_study.py in a subprocess is killed (with its whole Ray)
once two trials have finished; ``--resume`` then runs only the missing trials. While it
runs, no socket of the study is bound outside the loopback interface."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from study.results import read_meta
from study.space import grid_trials, load_space, trial_id

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_runner import TINY_DATA, is_loopback, listening_sockets  # noqa: E402


@pytest.fixture
def ray_tmp():
    """A short private temp root for the subprocess's Ray (socket paths must stay short),
    so that anything the killed run leaves behind can be found and stopped."""
    root = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    yield root
    stop_leftovers(root)
    shutil.rmtree(root, ignore_errors=True)


def stop_leftovers(marker: str) -> list[int]:
    """Kill the processes whose command line mentions ``marker`` (Ray's daemons of the
    killed run name their session folder); returns their pids."""
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
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass
    return found


def completed_rows(run_dir: Path) -> int:
    try:
        trials = pd.read_parquet(run_dir / "trials.parquet")
    except (OSError, ValueError):
        return 0
    return int((trials["status"] == "completed").sum())


def test_resume_after_kill_runs_each_planned_trial_once(tmp_path, ray_tmp):
    space_path = tmp_path / "resume.yaml"
    space_path.write_text(
        yaml.safe_dump(
            {
                "name": "resume",
                "storage_path": str(tmp_path / "runs"),
                # ~1.5 s per trial: the kill lands while later trials are still to run
                "datasets": [{"name": "phantom", "params": {**TINY_DATA, "n_train": 256}}],
                "models": [
                    {
                        "name": "ae",
                        "params": {
                            "latent_dim": [1, 2, 3, 4, 5, 6],
                            "num_blocks": 3,
                            "hidden_dim": 32,
                        },
                    }
                ],  # fmt: skip
                "training": {"epochs": 8, "eval_every": 4},
                "seeds": [0],
                # one Tune trial per config (fused, the six would finish together)
                "resources": {"max_concurrent_trials": 1, "fuse": "off"},
            }
        )
    )
    space = load_space(str(space_path))
    run_dir = space.run_dir
    planned = {trial_id(c) for c in grid_trials(space)}
    assert len(planned) == 6
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    # --num-gpus 0: CPU numbers, also on a machine with GPUs
    command = [sys.executable, "run_study.py", "--space", str(space_path), "--no-report",
               "--num-cpus", "2", "--num-gpus", "0"]  # fmt: skip

    first = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    sockets: list = []
    try:
        deadline = time.monotonic() + 240
        while completed_rows(run_dir) < 2:
            assert first.poll() is None, first.stdout.read().decode()
            assert time.monotonic() < deadline, "no two trials finished in time"
            sockets += listening_sockets(first.pid)
            time.sleep(0.5)
        sockets += listening_sockets(first.pid)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # kill -9 the driver and its Ray
        first.wait()
        first.stdout.close()
    time.sleep(1)
    stop_leftovers(ray_tmp)

    # the embedded Ray listened, on loopback only
    names = {name for name, _, _ in sockets}
    assert any(n.startswith(("gcs_server", "raylet")) for n in names), sockets
    assert not [s for s in sockets if not is_loopback(s[1])]

    before = pd.read_parquet(run_dir / "trials.parquet")
    n_before = len(before)
    assert 2 <= n_before < 6 and (before["status"] == "completed").all()
    assert read_meta(run_dir)["status"] == "running"  # killed: never got to say more

    second = subprocess.run(
        [*command, "--resume"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300, start_new_session=True,
    )  # fmt: skip
    stop_leftovers(ray_tmp)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{n_before} already finished, {6 - n_before} to run" in second.stdout

    after = pd.read_parquet(run_dir / "trials.parquet")
    assert len(after) == 6 and set(after["trial_id"]) == planned  # each exactly once
    assert (after["status"] == "completed").all()
    kept = after.set_index("trial_id").loc[before["trial_id"]]
    assert kept["finished_at"].tolist() == before["finished_at"].tolist()
    assert kept["auc"].tolist() == before["auc"].tolist()
    assert set(after.loc[~after["trial_id"].isin(before["trial_id"]), "session"]) == {2}

    # fit ran only for the missing trials: counted by the run and by Ray Tune's own folders
    meta = read_meta(run_dir)
    assert meta["status"] == "finished"
    assert meta["sessions"][-1]["trials_already_finished"] == n_before
    assert meta["sessions"][-1]["trials_started"] == 6 - n_before
    tune_dirs = [p for p in (run_dir / "tune" / "session-2").iterdir() if p.is_dir()]
    assert len(tune_dirs) == 6 - n_before
    history = pd.read_parquet(run_dir / "history.parquet")
    assert history.groupby("trial_id").size().to_dict() == dict.fromkeys(planned, 2)
