"""GPU scheduling without a GPU: Ray started with two declared (logical) GPUs.

The runner's resource bundle for ``gpus_per_trial: 0.5`` runs four trials at once on two
GPUs, each trial is given one GPU id by Ray, no GPU holds more than two, and inside the
trial Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPU it assigned; ``device: auto`` (with
``torch.cuda`` mocked as available) is ``cuda``, the first visible GPU, i.e. that one.

Not covered: with ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES`` set, every trial would
see all GPUs and ``cuda`` would be GPU 0 for all of them.
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

from study import cluster, runner
from study.runner import RunOptions, check_resources
from study.space import load_space


def physical_gpu(device: torch.device, visible: str) -> str:
    """The GPU id (as Ray and ``nvidia-smi`` number them) that ``device`` is, given the
    process's ``CUDA_VISIBLE_DEVICES``: ``cuda`` is the current device, index 0."""
    index = 0 if device.index is None else device.index
    return visible.split(",")[index]


def test_physical_gpu_of_device_auto_with_cuda_mocked(monkeypatch):
    from ae4ad.train import resolve_device

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
        ids = rows["gpu_ids"].astype(str)
        assert set(ids) <= {"0", "1"} and all("," not in i for i in ids)
        if fuse == "off":
            assert "per trial CPU=0.5, GPU=0.5" in out.getvalue()
        else:
            assert "fused: 4 trials in 2 bundles of up to 2 members" in out.getvalue()
            assert rows.groupby("bundle_id")["gpu_ids"].nunique().eq(1).all()
            assert rows["bundle_id"].nunique() == 2
