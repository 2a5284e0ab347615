"""A run's optuna.db opens in optuna-dashboard: the README's command, started on
127.0.0.1 with a free port, lists one study per stratum with its trials (values,
sampled params, the intermediate value of every evaluation, the trial ids)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from study import runner
from study.space import load_space

pytest.importorskip(
    "optuna_dashboard", reason="optuna-dashboard is not installed (the dashboard extra)"
)


@pytest.fixture
def optuna_db(tmp_path):
    """The optuna.db of a 2-strata Optuna study, written by the searcher a run uses,
    fed as Ray Tune feeds it: a result per evaluation, then the trial's end.
    Returns (path, {study name: {trial id: (value, {epoch: value})}})."""
    # the searcher imports Ray: first the environment a study gives it (as the runner
    # does), or a Ray started later in this process would not match it (auth token)
    runner.prepare_environment(local=True)
    from study.searcher import StratifiedOptunaSearcher

    space = load_space("optuna", ["search.n_trials=2", f"storage_path={tmp_path}"])
    path = tmp_path / "optuna.db"
    searcher = StratifiedOptunaSearcher(space, f"sqlite:///{path}")
    metric = space.scheduler.metric
    told: dict[str, dict[str, tuple[float, dict[int, float]]]] = {}
    for i in range(4):
        config = searcher.suggest(f"tune-{i}")
        curve = {5: 0.5 + 0.01 * i, 10: 0.6 + 0.02 * i}
        for epoch, value in curve.items():
            result = {"epoch": epoch, metric: value, "status": "running", "is_final": False}
            searcher.on_trial_result(f"tune-{i}", result)
        final = {**result, "status": "completed", "is_final": True}
        searcher.on_trial_complete(f"tune-{i}", final)
        study = f"optuna/{config['stratum']}"
        told.setdefault(study, {})[config["trial_id"]] = (curve[10], curve)
    return path, told


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_optuna_dashboard_lists_the_strata_studies_and_their_trials(optuna_db):
    path, told = optuna_db
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = Path(sys.executable).parent / "optuna-dashboard"  # as the README says
    process = subprocess.Popen(
        [str(command), f"sqlite:///{path}", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                studies = get_json(f"{base}/api/studies")["study_summaries"]
                break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"no answer: {process.stderr.read()[-2000:]!r}")
                time.sleep(0.5)
        by_name = {s["study_name"]: s for s in studies}
        assert sorted(by_name) == ["optuna/phantom-k3/ae", "optuna/phantom-k8/ae"]
        for name, trials in told.items():
            assert by_name[name]["directions"] == ["maximize"]
            detail = get_json(f"{base}/api/studies/{by_name[name]['study_id']}")
            assert detail["name"] == name and len(detail["trials"]) == 2
            for trial in detail["trials"]:
                attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
                value, curve = trials[attrs["trial_id"]]
                assert trial["state"] == "Complete"
                assert trial["values"] == [pytest.approx(value)]
                steps = {v["step"]: v["value"] for v in trial["intermediate_values"]}
                assert steps == pytest.approx(curve)
                params = {p["name"] for p in trial["params"]}
                assert {"model.latent_dim", "training.lr"} <= params
            best = detail["best_trials"][0]["values"][0]
            assert best == pytest.approx(max(v for v, _ in trials.values()))
    finally:
        process.terminate()
        process.wait(timeout=30)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        get_json(f"{base}/api/studies")  # stopped
