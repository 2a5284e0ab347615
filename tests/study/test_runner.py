"""The Ray Tune runner end to end on tiny phantoms: grid and Optuna studies, errored and
diverged trials, the tables they leave, Optuna's per-stratum studies, resource checks
and the embedded Ray's sockets. One Ray session is shared by the module."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from study import cluster, runner, tuner
from study.results import RunTables, read_meta, trial_status
from study.runner import RunOptions, StudyError, check_resources, run_study
from study.space import grid_trials, load_space, trial_id

TINY_DATA = {
    "image_size": 32,
    "n_train": 64,
    "n_val": 16,
    "n_test_normal": 16,
    "n_test_abnormal": 16,
}
TINY_AE = {"num_blocks": 3, "hidden_dim": 32}

REQUIRED_COLUMNS = [
    "study", "trial_id", "status", "error", "dataset", "dataset_source", "model",
    "model_name", "latent_dim", "hidden_dim", "num_blocks", "epochs", "batch_size", "lr",
    "weight_decay", "eval_every", "score", "seed", "stratum", "auc", "ap", "pixel_ap",
    "best_dice", "recon_error_train_normal", "recon_error_val_normal",
    "recon_error_test_normal", "recon_error_test_abnormal", "latent_entropy_gaussian",
    "latent_entropy_knn", "latent_effective_rank", "latent_participation_ratio",
    "latent_intrinsic_dim", "image_intrinsic_dim_twonn", "image_intrinsic_dim_mle",
    "mean_score_normal", "mean_score_abnormal", "best_auc", "best_ap", "epochs_done",
    "elapsed_s", "wall_s", "device", "hostname", "node_ip",
]  # fmt: skip


def write_space(tmp_path: Path, body: dict) -> Path:
    body = {"storage_path": str(tmp_path / "runs"), **body}
    path = tmp_path / f"{body['name']}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def quiet(**kw) -> RunOptions:
    return RunOptions(report=False, progress_interval_s=3600, **kw)


def listening_sockets(root_pid: int) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP / bound UDP socket of
    ``root_pid`` and its descendants, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo.extend(children.get(pid, []))
    inodes: dict[str, str] = {}
    for pid in tree:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = name
        except OSError:
            continue
    found = []
    for table, listen_state in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state == listen_state and inode in inodes:
                hex_ip, hex_port = local.split(":")
                found.append((inodes[inode], _ip(hex_ip), int(hex_port, 16)))
    return found


def _ip(hex_ip: str) -> str:
    raw = bytes.fromhex(hex_ip)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    full = b"".join(words)
    if full[:12] == b"\x00" * 10 + b"\xff\xff":
        return "::ffff:" + ".".join(str(b) for b in full[12:])
    return ":".join(full[i : i + 2].hex() for i in range(0, 16, 2))


def is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip.startswith("::ffff:127.") or ip == "0000:" * 7 + "0001"


# --------------------------------------------------------------------------- grid


def test_grid_run_writes_every_table_and_survives_an_errored_trial(tmp_path, ray_session):
    path = write_space(
        tmp_path,
        {
            "name": "grid",
            "datasets": [{"name": "phantom", "params": TINY_DATA}],
            "models": [
                {"name": "ae", "params": {"latent_dim": [2, 4], **TINY_AE}},
                # rejected by the model: 32 px is not divisible by 2**6 (the preflight
                # would refuse the space, so it is skipped to see a trial error at run time)
                {"name": "ae", "label": "broken", "params": {"latent_dim": 2, "num_blocks": 6}},
            ],
            "training": {"epochs": 2, "eval_every": 1},
            "seeds": [0],
        },
    )
    space = load_space(str(path), preflight=False)
    result = run_study(space, quiet())
    run_dir = space.run_dir

    assert result.status == "finished"
    assert result.counts["completed"] == 2 and result.counts["errored"] == 1

    trials = pd.read_parquet(run_dir / "trials.parquet")
    planned = {trial_id(c) for c in grid_trials(space)}
    assert len(trials) == 3 and set(trials["trial_id"]) == planned
    missing = [c for c in REQUIRED_COLUMNS if c not in trials.columns]
    assert not missing, missing
    assert len(pd.read_csv(run_dir / "trials.csv")) == 3

    ok = trials[trials["status"] == "completed"].sort_values("latent_dim")
    assert ok["latent_dim"].tolist() == [2, 4]
    assert ok["model"].tolist() == ["ae", "ae"] and set(ok["stratum"]) == {"phantom/ae"}
    assert ok["auc"].between(0, 1).all() and (ok["best_auc"] >= ok["auc"] - 1e-12).all()
    assert (ok["epochs_done"] == 2).all() and ok["error"].isna().all()
    assert (ok["node_ip"] == "127.0.0.1").all() and (ok["device"] == "cpu").all()
    assert (ok["wall_s"] >= ok["elapsed_s"]).all()

    bad = trials[trials["status"] == "errored"].iloc[0]
    assert bad["model"] == "broken" and bad["num_blocks"] == 6
    assert "ModelError" in bad["error"] and "divisible" in bad["error"]
    assert math.isnan(bad["auc"])

    history = pd.read_parquet(run_dir / "history.parquet")
    assert sorted(history.groupby("trial_id")["epoch"].apply(list).tolist()) == [[1, 2], [1, 2]]
    assert set(history["trial_id"]) == set(ok["trial_id"])
    assert {"auc", "train_loss", "latent_entropy_gaussian", "latent_dim"} <= set(history)

    scores = pd.read_parquet(run_dir / "scores.parquet")
    assert scores.groupby("trial_id").size().tolist() == [32, 32]
    assert scores.groupby("trial_id")["label"].sum().tolist() == [16, 16]

    examples = json.loads((run_dir / "examples.json").read_text())
    assert set(examples) == set(ok["trial_id"])
    assert {"inputs", "reconstructions", "anomaly_maps", "labels"} <= set(
        next(iter(examples.values()))
    )

    meta = read_meta(run_dir)
    assert meta["status"] == "finished" and meta["finished_at"]
    assert meta["packages"]["torch"] and meta["packages"]["ray"] and meta["packages"]["optuna"]
    assert meta["sessions"][-1]["trials_started"] == 3
    stored = yaml.safe_load((run_dir / "space.yaml").read_text())
    assert stored["name"] == "grid" and len(stored["models"]) == 2
    assert not list(run_dir.glob(".*.tmp"))

    # a second run of the same space refuses to touch the results
    with pytest.raises(StudyError, match="--resume"):
        run_study(space, quiet())
    # ... and resuming a finished grid runs nothing
    again = run_study(space, quiet(resume=True))
    assert again.trials_run == 0 and again.status == "finished"
    assert pd.read_parquet(run_dir / "trials.parquet")["finished_at"].tolist() == (
        trials["finished_at"].tolist()
    )


def test_embedded_ray_listens_on_loopback_only(ray_session):
    sockets = listening_sockets(os.getpid())
    names = {name for name, _, _ in sockets}
    assert any(n.startswith(("gcs_server", "raylet")) for n in names), sockets
    outside = [s for s in sockets if not is_loopback(s[1])]
    assert not outside, outside


# --------------------------------------------------------------------------- optuna


def test_optuna_keeps_one_study_per_stratum_and_fails_diverged_trials(tmp_path, ray_session):
    path = write_space(
        tmp_path,
        {
            "name": "opt",
            "datasets": [
                {"name": "phantom", "label": "phantom-a", "params": TINY_DATA},
                # lr 1e12 makes the loss NaN in the first epoch
                {
                    "name": "phantom",
                    "label": "unstable",
                    "params": TINY_DATA,
                    "training": {"lr": 1.0e12, "batch_size": 16},
                },
            ],
            "models": [{"name": "ae", "params": {"latent_dim": {"int": [1, 8]}, **TINY_AE}}],
            "training": {"epochs": 1, "eval_every": 1, "lr": {"float": [1e-4, 1e-2], "log": True}},
            "seeds": [0],
            "search": {"type": "optuna", "sampler": "tpe", "n_trials": 2, "seed": 0},
        },
    )
    space = load_space(str(path))
    run_study(space, quiet())
    run_dir = space.run_dir
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert trials.groupby("stratum").size().to_dict() == {"phantom-a/ae": 2, "unstable/ae": 2}
    a = trials[trials["dataset"] == "phantom-a"]
    unstable = trials[trials["dataset"] == "unstable"]
    assert (a["status"] == "completed").all()
    assert (unstable["status"] == "diverged").all()
    assert unstable["auc"].isna().all() and unstable["error"].str.contains("nan|inf").all()
    assert sorted(a["optuna_trial"]) == [0, 1]

    storage = f"sqlite:///{run_dir / 'optuna.db'}"
    assert sorted(optuna.get_all_study_names(storage)) == ["opt/phantom-a/ae", "opt/unstable/ae"]
    study_a = optuna.load_study(study_name="opt/phantom-a/ae", storage=storage)
    study_u = optuna.load_study(study_name="opt/unstable/ae", storage=storage)
    assert [t.state.name for t in study_a.trials] == ["COMPLETE", "COMPLETE"]
    assert [t.state.name for t in study_u.trials] == ["FAIL", "FAIL"]
    auc_by_id = dict(zip(a["trial_id"], a["auc"]))
    for t in study_a.trials:
        assert t.value == pytest.approx(auc_by_id[t.user_attrs["trial_id"]])
        assert set(t.params) == {"model.latent_dim", "training.lr"}
    # the unstable stratum's lr is its own, fixed: only latent_dim is searched there
    assert all(set(t.params) == {"model.latent_dim"} for t in study_u.trials)

    # resuming with a larger budget continues both studies to 3 trials each
    bigger = load_space(str(path), ["search.n_trials=3"])
    result = run_study(bigger, quiet(resume=True))
    assert result.trials_run == 2
    after = pd.read_parquet(run_dir / "trials.parquet")
    assert after.groupby("stratum").size().to_dict() == {"phantom-a/ae": 3, "unstable/ae": 3}
    kept = after.set_index("trial_id").loc[trials["trial_id"], "finished_at"]
    assert kept.tolist() == trials["finished_at"].tolist()
    assert len(optuna.load_study(study_name="opt/phantom-a/ae", storage=storage).trials) == 3
    assert read_meta(run_dir)["sessions"][-1]["trials_already_finished"] == 4


# --------------------------------------------------------------------------- resources


def test_resources_the_cluster_lacks_stop_the_study_before_any_trial(tmp_path, ray_session):
    path = write_space(
        tmp_path,
        {
            "name": "gpu",
            "datasets": [{"name": "phantom", "params": TINY_DATA}],
            "models": [{"name": "ae", "params": {"latent_dim": 2, **TINY_AE}}],
            "training": {"epochs": 1},
            "resources": {"gpus_per_trial": 1},
        },
    )
    space = load_space(str(path))
    with pytest.raises(StudyError, match="no GPU"):
        run_study(space, quiet())
    assert not (space.run_dir / "trials.parquet").exists()


def test_check_resources_names_what_is_missing():
    space = load_space("smoke")
    node = {"CPU": 2.0, "memory": 1e9}
    assert check_resources(space, [node]) == {"CPU": 1.0}
    with pytest.raises(StudyError, match="largest node has 2"):
        check_resources(load_space("smoke", ["resources.cpus_per_trial=4"]), [node])
    with pytest.raises(StudyError, match="custom.tpu.*none"):
        check_resources(load_space("smoke", ["resources.custom={tpu: 1}"]), [node])
    gpu_node = {"CPU": 4.0, "GPU": 1.0}
    assert check_resources(space, [gpu_node]) == {"CPU": 1.0, "GPU": 0.25}  # auto
    with pytest.raises(StudyError, match="GPUs per trial"):
        check_resources(load_space("smoke", ["resources.gpus_per_trial=2"]), [gpu_node])
    # four trials share one GPU (0.25 each), limited by the node's 4 CPUs
    assert cluster.concurrency(space, {"CPU": 1.0, "GPU": 0.25}, [gpu_node]) == 4


def test_asha_counts_epochs_and_a_stopped_trial_is_early_stopped():
    space = load_space(
        "smoke",
        ["scheduler={type: asha, grace_period: 1, reduction_factor: 2}", "training.epochs=4"],
    )
    scheduler = tuner.make_scheduler(space)  # one ASHA per stratum (tests/study/test_scheduler.py)
    assert scheduler.schedulers["phantom/ae"]._time_attr == "epoch"
    assert scheduler.max_t("phantom/ae") == 4
    assert tuner.make_scheduler(load_space("smoke")) is None
    assert trial_status([{"epoch": 2, "status": "running", "is_final": False}]) == "early-stopped"
    assert trial_status([{"epoch": 3, "status": "diverged", "is_final": True}]) == "diverged"


def test_tables_of_a_killed_run_are_read_back_without_unfinished_details(tmp_path):
    config = grid_trials(load_space("smoke"))[0]
    tables = RunTables(tmp_path)
    record = {"epoch": 1, "status": "completed", "is_final": True, "auc": 0.5, "scores": [0.1],
              "labels": [1], "examples": {"inputs": [[float("nan")]]}}  # fmt: skip
    tables.add_trial(config, [record], trial_id="a", study="smoke")
    tables.flush()
    # a detail row of a trial that never reached trials.parquet, and a stale temp file
    history = pd.read_parquet(tmp_path / "history.parquet")
    extra = history.assign(trial_id="orphan")
    pd.concat([history, extra]).to_parquet(tmp_path / "history.parquet")
    (tmp_path / ".trials.parquet.x.tmp").write_text("partial")
    loaded = RunTables.load(tmp_path)
    assert loaded.done_ids == {"a"}
    loaded.flush()
    assert set(pd.read_parquet(tmp_path / "history.parquet")["trial_id"]) == {"a"}
    assert json.loads((tmp_path / "examples.json").read_text())["a"]["inputs"] == [[None]]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failing_report_only_warns(tmp_path, monkeypatch):
    import study.report

    def broken(run_dir, **options):
        raise RuntimeError("no plotly today")

    monkeypatch.setattr(study.report, "write_report", broken)
    out = io.StringIO()
    assert runner._write_report(tmp_path, out) is None
    text = out.getvalue()
    assert "warning: the report failed (RuntimeError: no plotly today)" in text
    assert f"--report-only {tmp_path}" in text
