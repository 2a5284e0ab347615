"""Real Ray clusters on this machine, on 127.0.0.1 only: (a) a head started with
``ray start`` and a study submitted with ``ray job submit --working-dir .``; (b) a
two-node cluster whose trials run on both nodes. Each test stops only its own cluster
(by process group and temp folder), never every Ray process of the machine."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from study import runner
from study.results import read_meta
from study.runner import RunOptions, run_study
from study.space import load_space

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_resume import stop_leftovers  # noqa: E402
from test_runner import TINY_DATA  # noqa: E402

RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_space(tmp_path: Path, latent_dims: list[int]) -> Path:
    path = tmp_path / "tiny.yaml"
    body = {
        "name": "tiny",
        "storage_path": str(tmp_path / "runs"),
        "datasets": [{"name": "phantom", "params": TINY_DATA}],
        "models": [{"name": "ae", "params": {"latent_dim": latent_dims, "num_blocks": 3,
                                             "hidden_dim": 32}}],
        "training": {"epochs": 1, "eval_every": 1},
        "seeds": [0],
    }  # fmt: skip
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process of process group ``pgid`` remains."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


@pytest.fixture
def head_node():
    """``ray start --head`` with the dashboard (the jobs API lives there), every port on
    127.0.0.1, a private temp folder and a fresh auth token; stopped by process group."""
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    dashboard_port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # Ray 2.60 uses token authentication; the same token must reach `ray start`
        # and `ray job submit` (RAY_AUTH_TOKEN, or a file named by RAY_AUTH_TOKEN_PATH)
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    start = subprocess.Popen(
        [*RAY_CLI, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={free_port()}",
         f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={temp}",
         "--num-cpus=2", "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = start.communicate(timeout=180)
        assert start.returncode == 0, out
        yield f"http://127.0.0.1:{dashboard_port}", env
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(start.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and group_alive(start.pid):
                time.sleep(0.2)
        stop_leftovers(temp)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_runs_a_study_on_a_started_cluster(tmp_path, head_node):
    address, env = head_node
    space = tiny_space(tmp_path, [2, 4])
    done = subprocess.run(
        [*RAY_CLI, "job", "submit", "--address", address, "--working-dir", ".", "--",
         "python", "run_study.py", "--space", str(space), "--override",
         f"storage_path={tmp_path / 'job-runs'}", "--no-report"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "study tiny: 2 trials" in done.stdout and "succeeded" in done.stdout + done.stderr
    run_dir = tmp_path / "job-runs" / "tiny"
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "completed").all()
    assert (trials["node_ip"] == "127.0.0.1").all()
    meta = read_meta(run_dir)
    assert meta["status"] == "finished"
    assert meta["sessions"][-1]["ray_address"] not in ("local", None)  # joined the cluster


def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path):
    runner.prepare_environment(local=True)
    import ray
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized()
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 1}}
    )
    try:
        cluster.add_node(num_cpus=1, resources={"node_b": 1})
        cluster.wait_for_nodes()
        node_ids = {node.node_id for node in cluster.list_all_nodes()}
        assert len(node_ids) == 2
        space = load_space(str(tiny_space(tmp_path, [2, 4, 8, 16])))
        result = run_study(
            space, RunOptions(address=cluster.address, report=False, progress_interval_s=3600)
        )
        assert result.status == "finished" and result.counts["completed"] == 4
        trials = pd.read_parquet(space.run_dir / "trials.parquet")
        assert set(trials["node_id"]) == node_ids  # both nodes trained trials
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
