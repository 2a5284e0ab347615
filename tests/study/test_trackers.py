"""Trackers (MLflow, TensorBoard, W&B) through Ray Tune's logger callbacks: the space's
``logging:`` section and ``--log``, the one-line error for a tracker that is not
installed (before Ray starts), and one small Optuna study logged to all three trackers
without network, whose runs are read back and compared with history.parquet."""

from __future__ import annotations

import importlib.util
import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from study import cli, runner, trackers, tuner
from study.runner import RunOptions, run_study
from study.space import SpaceError, load_space, validate_space

TINY_DATA = {"image_size": 32, "n_train": 64, "n_val": 16, "n_test_normal": 16,
             "n_test_abnormal": 16}  # fmt: skip


def installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


# --------------------------------------------------------------------------- options


def test_logging_section_defaults_round_trip_and_errors():
    space = load_space("smoke")
    assert space.logging.trackers == []
    assert "logging" not in space.to_dict()  # spaces without trackers stay as they were

    space = load_space(
        "smoke",
        [
            "logging.trackers=[mlflow, tensorboard, mlflow]",
            "logging.wandb={project: lab, mode: disabled}",
        ],
    )
    assert space.logging.trackers == ["mlflow", "tensorboard"]
    assert (space.logging.wandb.project, space.logging.wandb.mode) == ("lab", "disabled")
    again = validate_space(yaml.safe_load(yaml.safe_dump(space.to_dict())))
    assert again.to_dict() == space.to_dict() and again.logging == space.logging

    for override, message in [
        ("logging.trackers=[mlfow]", "logging.trackers[0]: unknown tracker (allowed: mlflow,"),
        ("logging.trackers=mlflow", "logging.trackers: expected a list of trackers"),
        ("logging.mlfow={}", "logging.mlfow: unknown key; did you mean 'mlflow'?"),
        ("logging.mlflow.tracking_url=x", "logging.mlflow.tracking_url: unknown key; did you mean"),
        ("logging.wandb.mode=cloud", "logging.wandb.mode: unknown mode (allowed: offline,"),
        ("logging=3", "logging: expected a mapping of logging settings"),
    ]:
        with pytest.raises(SpaceError) as info:
            load_space("smoke", [override])
        assert str(info.value).startswith(f"smoke.yaml: {message}"), str(info.value)


def test_log_option_adds_trackers_to_the_space(tmp_path):
    space = load_space("smoke", ["logging.trackers=[tensorboard]"])
    merged = trackers.with_trackers(space, ["mlflow", "tensorboard", "wandb"])
    assert merged.logging.trackers == ["tensorboard", "mlflow", "wandb"]
    assert space.logging.trackers == ["tensorboard"]  # the space itself is unchanged
    assert merged.path == space.path and merged.name == "smoke"
    args = cli.build_parser().parse_args(["--space", "smoke", "--log", "mlflow", "--log", "wandb"])
    assert args.log == ["mlflow", "wandb"]

    run = load_space("smoke", [f"storage_path={tmp_path}"])
    assert trackers.mlflow_uri(run) == f"sqlite:///{tmp_path / 'smoke' / 'mlflow.db'}"
    assert trackers.tensorboard_dir(run) == tmp_path / "smoke" / "tensorboard"
    lines = trackers.describe(trackers.with_trackers(run, trackers.TRACKERS))
    assert lines == [
        f"tracking: mlflow sqlite:///{tmp_path}/smoke/mlflow.db (experiment smoke)",
        f"tracking: tensorboard --logdir {tmp_path}/smoke/tensorboard",
        f"tracking: wandb project smoke (offline) in {tmp_path}/smoke/wandb",
    ]


@pytest.mark.parametrize("tracker", trackers.TRACKERS)
def test_a_tracker_not_installed_is_one_line_and_exit_2_before_ray(
    tracker, tmp_path, monkeypatch, capsys
):
    missing = trackers.PACKAGES[tracker]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        trackers.importlib.util,
        "find_spec",
        lambda name, *a: None if name == missing else real_find_spec(name, *a),
    )

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(runner, "start_ray", no_ray)
    code = cli.main(
        ["--space", "smoke", "--override", f"storage_path={tmp_path}", "--log", tracker]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(
        f"error: logging: the {tracker} tracker needs the package '{missing}', which is not "
        f"installed (pip install 'ae4ad-study[{tracker}]'"
    ), err
    assert not (tmp_path / "smoke").exists()


def test_trackers_are_not_checked_when_none_is_asked_for(tmp_path, monkeypatch):
    monkeypatch.setattr(trackers, "check", lambda space: pytest.fail("checked"))
    monkeypatch.setattr(runner, "start_ray", lambda options: pytest.fail("Ray started"))
    monkeypatch.setattr(runner, "_load_datasets", lambda space: (_ for _ in ()).throw(KeyError))
    with pytest.raises(KeyError):  # got past the tracker check without calling it
        run_study(load_space("smoke", [f"storage_path={tmp_path}"]), RunOptions(report=False))


@pytest.mark.skipif(not installed("mlflow"), reason="mlflow is not installed (the mlflow extra)")
def test_an_mlflow_store_that_does_not_open_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    space = load_space(
        "smoke",
        [f"storage_path={tmp_path}", f"logging.mlflow.tracking_uri=sqlite:///{tmp_path}/file/x.db"],
    )
    with pytest.raises(trackers.TrackerError) as info:
        trackers.check(trackers.with_trackers(space, ["mlflow"]))
    message = str(info.value)
    assert message.startswith("logging.mlflow.tracking_uri: MLflow cannot open sqlite:///")
    assert "\n" not in message


def test_wandb_online_without_an_api_key_is_refused(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (the wandb extra)")
    for key in ("WANDB_API_KEY", "WANDB_MODE", "NETRC"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login either
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    space = load_space("smoke", ["logging={trackers: [wandb], wandb: {mode: online}}"])
    with pytest.raises(trackers.TrackerError, match="online needs a W&B API key"):
        trackers.check(space)
    trackers.check(load_space("smoke", ["logging.trackers=[wandb]"]))  # offline: no key needed


def test_tracker_callbacks_get_every_scalar_of_the_record_at_its_epoch():
    logged = []

    class Base:  # stands for a Tune LoggerCallback
        def log_trial_result(self, iteration, trial, result):
            logged.append(result)

    cls = trackers._on_epochs(Base, tuner.record_from_result, "auc")
    result = {
        "epoch": 5, "auc": 0.0, "metric_replaced": True, "status": "diverged", "ap": 0.25,
        "is_final": True, "scores": [0.1, 0.2], "node_id": "abc", "training_iteration": 2,
        "time_total_s": 3.0, "trial_id": "t", "config": {"lr": 0.1},
    }  # fmt: skip
    cls().log_trial_result(2, None, result)
    (out,) = logged
    assert math.isnan(out.pop("auc"))  # the stand-in of a NaN objective is NaN again
    assert out == {"epoch": 5, "ap": 0.25, "is_final": 1, "training_iteration": 5}


# --------------------------------------------------------------------------- one study


def read_wandb_records(path: Path) -> list:
    """The protobuf records of an offline W&B run file (``run-<id>.wandb``: a 7-byte
    header, then LevelDB-log blocks of 32 KiB, each record with a 7-byte header: crc32,
    length, type full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """A 2-trial Optuna study (2 strata, 3 epochs) logged to MLflow, TensorBoard and W&B
    (offline); the run folder, its history and trials tables."""
    if not installed("mlflow", "tensorboardX", "tensorboard", "wandb"):
        pytest.skip("mlflow, tensorboard and wandb are needed (pip install -e '.[test]')")
    root = tmp_path_factory.mktemp("trackers")
    body = {
        "name": "tracked",
        "storage_path": str(root / "runs"),
        "datasets": [
            {"name": "phantom", "label": "k3", "params": {**TINY_DATA, "intrinsic_dim": 3}},
            {"name": "phantom", "label": "k8", "params": {**TINY_DATA, "intrinsic_dim": 8}},
        ],
        "models": [
            {
                "name": "ae",
                "params": {"latent_dim": {"int": [2, 8]}, "num_blocks": 3, "hidden_dim": 32},
            }  # fmt: skip
        ],
        "training": {"epochs": 3, "eval_every": 2},  # evaluations at epochs 2 and 3
        "search": {"type": "optuna", "n_trials": 1, "seed": 0},
        "logging": {"trackers": ["mlflow", "tensorboard"], "wandb": {"project": "lab"}},
    }
    path = root / "tracked.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    space = trackers.with_trackers(load_space(str(path)), ["wandb"])  # as --log wandb does
    runner.prepare_environment(local=True)
    out = io.StringIO()
    started = runner.start_ray(RunOptions(num_cpus=2))
    try:
        result = run_study(space, RunOptions(report=False, progress_interval_s=3600, out=out))
    finally:
        if started:
            import ray

            ray.shutdown()
    assert result.status == "finished", out.getvalue()
    run_dir = space.run_dir
    history = pd.read_parquet(run_dir / "history.parquet")
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "completed").all()
    return run_dir, history, trials, out.getvalue()


# history.parquet's identity columns: from the trial's config, not from its records
IDENTITY = ("trial_id", "dataset", "model", "latent_dim", "seed")


def numeric_series(history: pd.DataFrame, trial_id: str) -> dict[str, list[tuple[int, float]]]:
    """(epoch, value) per numeric record column of one trial's history (booleans 0/1)."""
    rows = history[history["trial_id"] == trial_id].sort_values("epoch")
    out = {}
    for column in rows.columns:
        values = rows[column]
        if pd.api.types.is_bool_dtype(values):
            values = values.astype(int)
        if column not in IDENTITY and pd.api.types.is_numeric_dtype(values):
            out[column] = [(int(e), float(v)) for e, v in zip(rows["epoch"], values)]
    return out


def assert_same_series(got: list, expected: list, what: str) -> None:
    """The same (step, value) pairs, NaN left out on both sides (a key a record lacks is
    NaN in history.parquet and absent from a tracker); values to float32 (TensorBoard)."""
    got = [(step, value) for step, value in got if not math.isnan(value)]
    expected = [(step, value) for step, value in expected if not math.isnan(value)]
    assert [step for step, _ in got] == [step for step, _ in expected], what
    values = [value for _, value in expected]
    assert [value for _, value in got] == pytest.approx(values, rel=1e-6), what


def test_the_run_prints_where_each_tracker_writes(logged_run):
    run_dir, _, _, printed = logged_run
    assert f"tracking: mlflow sqlite:///{run_dir}/mlflow.db (experiment tracked)" in printed
    assert f"tracking: tensorboard --logdir {run_dir}/tensorboard" in printed
    assert f"tracking: wandb project lab (offline) in {run_dir}/wandb" in printed


def test_mlflow_has_one_run_per_trial_with_its_config_and_every_metric_series(logged_run):
    import mlflow
    from mlflow import MlflowClient

    run_dir, history, trials, _ = logged_run
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["tracked"]).set_index("tags.mlflow.runName")
    assert sorted(runs.index) == sorted(trials["trial_id"])
    assert (runs["status"] == "FINISHED").all()
    client = MlflowClient(uri)
    for trial in trials.itertuples():
        run = runs.loc[trial.trial_id]
        assert int(run["params.model_params/latent_dim"]) == trial.latent_dim
        assert float(run["params.lr"]) == pytest.approx(trial.lr)
        assert run["params.stratum"] == trial.stratum and run["tags.study"] == "tracked"
        expected = numeric_series(history, trial.trial_id)
        assert len(expected) > 20 and [e for e, _ in expected["auc"]] == [2, 3]
        for key, pairs in expected.items():
            got = [(m.step, m.value) for m in client.get_metric_history(run.run_id, key)]
            assert_same_series(got, pairs, key)
        assert run["metrics.auc"] == pytest.approx(trial.auc)  # the last one


def test_tensorboard_event_files_hold_every_scalar_per_epoch(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, history, trials, _ = logged_run
    folders = sorted(p.name for p in (run_dir / "tensorboard").iterdir())
    assert folders == sorted(trials["trial_id"])
    for tid in trials["trial_id"]:
        events = EventAccumulator(str(run_dir / "tensorboard" / tid))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        for key, pairs in numeric_series(history, tid).items():
            if all(math.isnan(value) for _, value in pairs):  # TensorBoard skips NaN
                continue
            assert f"ray/tune/{key}" in tags, key
            got = [(e.step, e.value) for e in events.Scalars(f"ray/tune/{key}")]
            assert_same_series(got, pairs, key)


def test_wandb_offline_writes_one_run_per_trial_with_its_history(logged_run):
    run_dir, history, trials, _ = logged_run
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2
    seen = {}
    for file in files:
        records = read_wandb_records(file)
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert (run.project, run.run_group) == ("lab", "tracked")
        config = {u.key: json.loads(u.value_json) for u in run.config.update}
        steps = [
            {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
            for r in records
            if r.WhichOneof("record_type") == "history"
        ]
        seen[run.display_name] = (config, steps)
    assert sorted(seen) == sorted(trials["trial_id"])
    for trial in trials.itertuples():
        config, steps = seen[trial.trial_id]
        assert config["model_params"]["latent_dim"] == trial.latent_dim
        expected = numeric_series(history, trial.trial_id)
        assert len(steps) == len(expected["auc"]) == 2
        for key, pairs in expected.items():
            got = [(step["_step"], step[key]) for step in steps if key in step]
            got = [(s, math.nan if v is None or v == "NaN" else v) for s, v in got]
            assert_same_series(got, pairs, key)


def test_the_module_examples_run():
    import doctest

    result = doctest.testmod(trackers, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
