"""GPU scheduling without a GPU: Ray started with two declared (logical) GPUs.

The runner's resource bundle for ``gpus_per_trial: 0.5`` runs four trials at once on two
GPUs, each trial is given one GPU id by Ray, no GPU holds more than two, and inside the
trial Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPU it assigned; the trial's device
(:func:`study.trainable.device_settings`) is ``cuda:0``, i.e. that one, with its GPU share
as its memory fraction. A trial given no GPU trains on the CPU whatever
``CUDA_VISIBLE_DEVICES`` says (Ray leaves it unset); with
``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES`` the assigned id is looked up among the
visible GPUs. Devices the resources cannot give are refused before Ray starts.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch

from ae4ad import ConfigError
from study import cluster, runner
from study.devices import NOSET_ENV, trial_device
from study.plan import StudyError
from study.runner import RunOptions, check_resources
from study.schema import SpaceError
from study.space import load_space


def physical_gpu(device: torch.device, visible: str) -> str:
    """The GPU id (as Ray and ``nvidia-smi`` number them) that ``device`` is, given the
    process's ``CUDA_VISIBLE_DEVICES``: ``cuda`` is the current device, index 0."""
    index = 0 if device.index is None else device.index
    return visible.split(",")[index]


@pytest.mark.parametrize(
    "requested, ids, visible, noset, expected",
    [
        ("auto", [], None, False, "cpu"),  # no GPU assigned: the CPU, though torch sees GPUs
        ("auto", [], "0,1", False, "cpu"),
        ("cpu", ["1"], "1", False, "cpu"),
        ("auto", ["1"], "1", False, "cuda:0"),  # Ray narrowed CUDA_VISIBLE_DEVICES to GPU 1
        ("cuda", ["1"], "1", False, "cuda:0"),
        ("cuda:1", ["2", "3"], "2,3", False, "cuda:1"),
        ("auto", [1], None, True, "cuda:1"),  # NOSET, all GPUs visible: the assigned id
        ("auto", ["5"], "2,5,7", True, "cuda:1"),  # NOSET: its place among the visible ones
        ("cuda:1", ["2", "7"], "2,5,7", True, "cuda:2"),
    ],
)
def test_trial_device_is_the_assigned_gpu(requested, ids, visible, noset, expected):
    assert trial_device(requested, ids, visible, noset) == expected


def test_trial_device_refuses_gpus_ray_did_not_assign():
    with pytest.raises(ConfigError, match=r"'cuda', but Ray assigned this trial 0 GPU\(s\)"):
        trial_device("cuda", [], None)
    with pytest.raises(ConfigError, match=r"'cuda:1', but Ray assigned this trial 1 GPU"):
        trial_device("cuda:1", ["0"], "0")
    with pytest.raises(ConfigError, match="assigned GPU 4, which CUDA_VISIBLE_DEVICES=0,1"):
        trial_device("auto", ["4"], "0,1", noset=True)


def test_device_settings_follow_rays_assignment(monkeypatch):
    """The trainable's device and memory fraction, with Ray's answers monkeypatched."""
    runner.prepare_environment(local=True)  # before the first import of ray
    import ray

    from study.trainable import device_settings

    def assigned(ids, share):
        monkeypatch.setattr(ray, "get_gpu_ids", lambda: ids)
        context = mock.Mock()
        context.get_assigned_resources.return_value = {"CPU": 1.0, "GPU": share} if ids else {}
        monkeypatch.setattr(ray, "get_runtime_context", lambda: context)

    monkeypatch.delenv(NOSET_ENV, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # Ray 2.60, 0 GPUs: unset
    assigned([], 0)
    assert device_settings({"device": "auto"}) == {"device": "cpu", "gpu_memory_fraction": None}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assigned(["3"], 0.25)
    assert device_settings({"device": "auto"}) == {
        "device": "cuda:0",
        "gpu_memory_fraction": 0.25,
    }
    assert device_settings({"device": "auto", "gpu_memory_fraction": 0.5}) == {
        "device": "cuda:0",
        "gpu_memory_fraction": 0.5,
    }
    assigned(["3"], 1.0)  # a whole GPU: no limit
    assert device_settings({})["gpu_memory_fraction"] is None
    monkeypatch.setenv(NOSET_ENV, "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert device_settings({"device": "cuda"})["device"] == "cuda:1"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["training.device=cuda", "resources.gpus_per_trial=0"], "cuda needs a GPU"),
        (["training.device=cuda:0", "resources.gpus_per_trial=0"], "cuda:0 needs a GPU"),
        (
            ["training.device=cuda:1", "resources.gpus_per_trial=0.25"],
            r"cuda:1 needs 2 GPUs per trial, but gpus_per_trial is 0.25 \(a trial sees 1 GPU",
        ),
        (
            ["training.device=cuda:2", "resources.gpus_per_trial=2"],
            r"cuda:2 needs 3 GPUs.*\(a trial sees 2 GPUs",
        ),
        (["training.device=cuda:1"], "cuda:1 needs 2 GPUs per trial, but gpus_per_trial is auto"),
    ],
)
def test_devices_the_resources_cannot_give_are_refused_before_ray(overrides, message):
    with pytest.raises(SpaceError, match=f"smoke.yaml: training.device: {message}"):
        load_space("smoke", overrides)


def test_devices_the_resources_give_pass(capsys):
    for overrides in (
        ["training.device=cuda:1", "resources.gpus_per_trial=2"],
        ["training.device=cuda", "resources.gpus_per_trial=0.5"],
        ["training.device=cuda"],  # auto: the cluster tells (below)
        ["training.device=cpu", "resources.gpus_per_trial=1"],
        ["training.device=auto", "resources.gpus_per_trial=0"],
    ):
        load_space("smoke", overrides)
    space = load_space("smoke", ["training.device=cuda"])
    assert check_resources(space, [{"CPU": 4.0, "GPU": 1.0}]) == {"CPU": 1.0, "GPU": 0.25}
    with pytest.raises(StudyError, match="training.device: cuda needs a GPU.*0 GPUs"):
        check_resources(space, [{"CPU": 4.0}])


def test_the_cli_refuses_an_impossible_device_in_one_line(capsys):
    from study.cli import main

    argv = ["--space", "smoke", "--dry-run", "--override", "training.device=cuda:1"]
    assert main([*argv, "--override", "resources.gpus_per_trial=0.25"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: smoke.yaml: training.device: cuda:1") and "\n" not in err


def test_physical_gpu_of_device_auto_with_cuda_mocked(monkeypatch):
    from ae4ad.device import resolve_device

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # what Ray sets for a trial on GPU 1
    with mock.patch.object(torch.cuda, "is_available", return_value=True):
        device = resolve_device("auto")
    assert device.type == "cuda"
    assert physical_gpu(device, os.environ["CUDA_VISIBLE_DEVICES"]) == "1"
    assert physical_gpu(torch.device("cuda:1"), "3,5") == "5"
    with mock.patch.object(torch.cuda, "is_available", return_value=False):
        assert resolve_device("auto") == torch.device("cpu")


def probe(config: dict) -> None:
    """A trial that records the GPU Ray gave it and waits (up to 60 s) until
    ``config["n"]`` trials are running, then reports what it saw. (No torch here: four
    workers importing it on two busy cores take long; the unit test above covers what
    ``device: auto`` makes of ``CUDA_VISIBLE_DEVICES``.)"""
    import ray
    from ray import tune

    folder = Path(config["folder"])
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    mine = folder / f"trial-{config['i']}.json"
    mine.write_text(json.dumps({"gpu_ids": gpu_ids}))
    deadline = time.monotonic() + 60
    while len(list(folder.glob("trial-*.json"))) < config["n"] and time.monotonic() < deadline:
        time.sleep(0.05)
    running = [json.loads(p.read_text())["gpu_ids"] for p in folder.glob("trial-*.json")]
    time.sleep(0.5)  # stay running while the others look
    tune.report(
        {
            "gpu_ids": ",".join(gpu_ids),
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "running_at_once": len(running),
            "running_gpu_ids": json.dumps(running),
        }
    )


def device_probe(config: dict) -> None:
    """A trial that reports the device and memory fraction the trainable gives it."""
    import ray
    from ray import tune

    from study.trainable import device_settings

    settings = device_settings({"device": "auto"})
    tune.report(
        {
            "gpus": config["gpus"],
            "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
            "device": settings["device"],
            "fraction": settings["gpu_memory_fraction"],
        }
    )


@pytest.fixture
def ray_with_two_gpus():
    runner.prepare_environment(local=True)  # before the first import of ray
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    runner.start_ray(RunOptions(num_cpus=2, num_gpus=2))
    yield ray
    ray.shutdown()


def test_half_gpu_trials_run_four_at_once_on_two_gpus(tmp_path, ray_with_two_gpus):
    ray = ray_with_two_gpus
    from ray import cloudpickle, tune

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests

    space = load_space("smoke", ["resources.cpus_per_trial=0.5", "resources.gpus_per_trial=0.5"])
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    bundle = check_resources(space, nodes)
    assert bundle == {"CPU": 0.5, "GPU": 0.5}
    assert cluster.concurrency(space, bundle, nodes) == 4

    folder = tmp_path / "probe"
    folder.mkdir()
    trainable = tune.with_resources(probe, tune.PlacementGroupFactory([bundle]))
    tuner = tune.Tuner(
        trainable,
        param_space={"folder": str(folder), "n": 4, "i": tune.grid_search([0, 1, 2, 3])},
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0),
    )
    results = tuner.fit()
    assert not results.errors
    rows = [r.metrics for r in results]
    assert len(rows) == 4
    for row in rows:
        assert row["running_at_once"] == 4  # all four ran at the same time
        ids = row["gpu_ids"].split(",")
        assert len(ids) == 1 and ids[0] in ("0", "1")  # one GPU each, from the two declared
        # Ray narrows CUDA_VISIBLE_DEVICES to it, so device auto (cuda = the first visible
        # GPU, see the unit test) trains on the assigned GPU
        assert row["visible"] == row["gpu_ids"]
        visible = row["visible"]
        assert physical_gpu(torch.device("cuda"), visible) == row["gpu_ids"]
        running = [g for ids in json.loads(row["running_gpu_ids"]) for g in ids]
        assert running.count("0") == running.count("1") == 2  # no GPU over-subscribed


def test_a_study_on_declared_gpus_records_the_assigned_ids_and_bundles_take_their_share(
    tmp_path, ray_with_two_gpus
):
    """run_study itself on two declared GPUs (training on the CPU: no CUDA here): with
    gpus_per_trial 0.5, unfused trials record one GPU id each, both GPUs used; fused in
    bundles of 2, each bundle asks for a whole GPU and its members record the same id."""
    import io

    import pandas as pd
    import yaml

    body = {
        "name": "gpus",
        "storage_path": str(tmp_path / "runs"),
        "datasets": [
            {
                "name": "phantom",
                "params": {
                    "image_size": 32,
                    "n_train": 32,
                    "n_val": 8,
                    "n_test_normal": 8,
                    "n_test_abnormal": 8,
                },
            }
        ],  # fmt: skip
        "models": [
            {
                "name": "ae",
                "params": {"latent_dim": [1, 2, 4, 8], "num_blocks": 3, "hidden_dim": 16},
            }
        ],  # fmt: skip
        "training": {"epochs": 1, "eval_every": 1, "batch_size": 16, "device": "cpu"},
        "seeds": [0],
        "resources": {"cpus_per_trial": 0.5, "gpus_per_trial": 0.5},
    }
    path = tmp_path / "gpus.yaml"
    path.write_text(yaml.safe_dump(body))
    for fuse, name in (("off", "single"), (2, "fused")):
        space = load_space(str(path), [f"resources.fuse={fuse}", f"name={name}"])
        out = io.StringIO()
        runner.run_study(space, RunOptions(report=False, progress_interval_s=3600, out=out))
        rows = pd.read_parquet(space.run_dir / "trials.parquet")
        assert (rows["status"] == "completed").all() and len(rows) == 4, out.getvalue()
        assert (rows["device"] == "cpu").all()  # the device used, as training.device says
        ids = rows["gpu_ids"].astype(str)
        assert set(ids) <= {"0", "1"} and all("," not in i for i in ids)
        if fuse == "off":
            assert "per trial CPU=0.5, GPU=0.5" in out.getvalue()
        else:
            assert "fused: 4 trials in 2 bundles of up to 2 members" in out.getvalue()
            assert rows.groupby("bundle_id")["gpu_ids"].nunique().eq(1).all()
            assert rows["bundle_id"].nunique() == 2


@pytest.fixture
def ray_with_two_gpus_noset(monkeypatch):
    """Two declared GPUs, and Ray told to leave CUDA_VISIBLE_DEVICES alone."""
    runner.prepare_environment(local=True)
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv(NOSET_ENV, "1")  # workers inherit it from the raylet
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    runner.start_ray(RunOptions(num_cpus=2, num_gpus=2))
    yield ray
    ray.shutdown()


def test_trials_use_the_gpu_ray_assigned_also_with_noset(tmp_path, ray_with_two_gpus_noset):
    """In real Ray workers: a trial given no GPU is on the CPU; with NOSET every trial
    sees all GPUs (CUDA_VISIBLE_DEVICES unset) and trains on the one Ray assigned."""
    from ray import cloudpickle, tune

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    trainable = tune.with_resources(
        device_probe,
        lambda config: tune.PlacementGroupFactory(
            [{"CPU": 0.5, **({"GPU": config["gpus"]} if config["gpus"] else {})}]
        ),
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"gpus": tune.grid_search([0, 0.5, 1, 1])},
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0),
    )
    results = tuner.fit()
    assert not results.errors
    rows = sorted((r.metrics for r in results), key=lambda r: r["gpus"])
    assert [r["gpus"] for r in rows] == [0, 0.5, 1, 1]
    assert rows[0]["device"] == "cpu" and rows[0]["fraction"] is None and not rows[0]["gpu_ids"]
    for row in rows[1:]:
        assert row["visible"] == "<unset>"  # NOSET: Ray did not narrow it
        assert row["device"] == f"cuda:{row['gpu_ids']}"  # the assigned GPU, not GPU 0
    assert rows[1]["fraction"] == 0.5 and rows[2]["fraction"] is None


def test_gpu_memory_fraction_does_not_change_trial_ids():
    from study.space import grid_trials, trial_id

    def ids(*overrides: str) -> list[str]:
        return [trial_id(c) for c in grid_trials(load_space("smoke", list(overrides)))]

    assert ids() == ids("training.gpu_memory_fraction=0.4")  # a cap, not a result
    assert ids() != ids("training.deterministic=true")  # other numbers on a GPU
    capped = grid_trials(load_space("smoke", ["training.gpu_memory_fraction=0.4"]))
    assert all(c["gpu_memory_fraction"] == 0.4 for c in capped)
