"""Checkpoints in plain ae4ad (no Ray): fit's state out and start state, checkpoint
files that load with weights_only=True, load_trained and the preprocessing of new
images, export of a data set split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ae4ad import ConfigError, DataError, TrainedModelError, fit, load_dataset, load_trained
from ae4ad.trained import (
    MODEL_FILE,
    STATE_FILE,
    export_images,
    list_inputs,
    load_checkpoint,
    overlay,
    save_checkpoint,
)

DATA = {"image_size": 16, "n_train": 48, "n_val": 8, "n_test_normal": 12, "n_test_abnormal": 12}
BASE = {
    "dataset": "phantom",
    "dataset_params": DATA,
    "model": "ae",
    "model_params": {"latent_dim": 3, "num_blocks": 2, "hidden_dim": 16, "base_width": 4},
    "epochs": 6,
    "batch_size": 16,
    "eval_every": 2,
    "seed": 3,
    "threads": 1,
    "device": "cpu",  # exact comparisons are CPU facts (CUDA: tests/test_device.py)
}
TIMING = ("elapsed_s", "images_per_s", "train_time_s")


@pytest.fixture(scope="module")
def data():
    return load_dataset("phantom", **DATA)


def strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def run_with_states(config, data, **kw):
    states = []
    records = list(fit(config, dataset=data, state_out=lambda s, r: states.append(s), **kw))
    return records, states


@pytest.mark.parametrize("model", ["ae", "vae", "ceae"])  # vae, ceae draw random numbers
def test_resuming_from_any_evaluation_gives_the_uninterrupted_records(data, model):
    config = {**BASE, "model": model}
    full, states = run_with_states(config, data)
    assert [s["epoch"] for s in states] == [2, 4, 6] == [r["epoch"] for r in full]
    for state in states[:-1]:
        again = list(fit(config, dataset=data, start_state=state))
        assert [r["epoch"] for r in again] == [
            r["epoch"] for r in full if r["epoch"] > state["epoch"]
        ]
        assert strip(again) == strip(full[-len(again) :])  # bit for bit, timings aside
        # the timers go on from the state's
        assert again[0]["train_time_s"] > state["timers"]["train_time_s"]


def test_state_is_a_copy_with_plain_contents(data):
    _, states = run_with_states(BASE, data)
    first, last = states[0], states[-1]
    assert first["epoch"] == 2 and last["epoch"] == 6
    key = next(iter(first["model"]))
    assert not torch.equal(first["model"][key], last["model"][key])  # not the live weights
    assert first["scheduler"] is None and first["format"] == "ae4ad-train-state/1"
    assert first["model_spec"] == {
        "name": "ae",
        "params": {"image_size": 16, "in_channels": 1, **BASE["model_params"]},
    }
    assert first["data"]["image_size"] == 16 and first["data"]["value_range"] == [-1.0, 1.0]
    assert set(first["rng"]) == {"torch", "generator", "numpy", "cuda"}


def test_checkpoint_files_load_weights_only_and_resume(tmp_path, data):
    full, states = run_with_states(BASE, data)
    folder = save_checkpoint(tmp_path / "ckpt", states[0], extra={"trial_id": "t1"})
    for name in (MODEL_FILE, STATE_FILE):
        obj = torch.load(folder / name, weights_only=True)  # plain tensors and dicts only
        assert obj["epoch"] == 2
    assert "model" not in torch.load(folder / STATE_FILE, weights_only=True)  # weights once
    state = load_checkpoint(folder)
    again = list(fit(BASE, dataset=data, start_state=state))
    assert strip(again) == strip(full[1:])


def test_a_start_state_must_continue_the_same_training(data):
    _, states = run_with_states(BASE, data)
    with pytest.raises(ConfigError, match="lr"):
        list(fit({**BASE, "lr": 0.01}, dataset=data, start_state=states[0]))
    with pytest.raises(ConfigError, match="latent_dim"):
        other = {**BASE, "model_params": {**BASE["model_params"], "latent_dim": 4}}
        list(fit(other, dataset=data, start_state=states[0]))
    with pytest.raises(ConfigError, match="nothing left"):
        list(fit(BASE, dataset=data, start_state=states[-1]))
    with pytest.raises(ConfigError, match="start_state"):
        list(fit(BASE, dataset=data, start_state={"epoch": 2}))
    # more epochs than before: training goes on
    longer = list(fit({**BASE, "epochs": 8}, dataset=data, start_state=states[-1]))
    assert [r["epoch"] for r in longer] == [8]


def test_load_trained_scores_like_the_run(tmp_path, data):
    full, states = run_with_states(BASE, data)
    save_checkpoint(tmp_path / "final", states[-1], extra={"trial_id": "t9"})
    trained = load_trained(tmp_path / "final")
    assert trained.epoch == 6 and trained.trial_id == "t9" and not trained.model.training
    assert (trained.preprocessing.image_size, trained.preprocessing.in_channels) == (16, 1)
    out = trained.score(data.test)
    assert out["scores"].tolist() == pytest.approx(full[-1]["scores"], abs=0)
    assert out["maps"].shape == (24, 1, 16, 16)
    # the run folder layout: <run>/models/<trial_id>.pt
    (tmp_path / "run" / "models").mkdir(parents=True)
    (tmp_path / "final" / MODEL_FILE).rename(tmp_path / "run" / "models" / "t9.pt")
    assert load_trained(tmp_path / "run", "t9").epoch == 6
    with pytest.raises(TrainedModelError, match="no model kept for trial 'nope'.*t9"):
        load_trained(tmp_path / "run", "nope")
    (tmp_path / "broken.pt").write_bytes(b"not a model")
    with pytest.raises(TrainedModelError, match="broken.pt"):
        load_trained(tmp_path / "broken.pt")


def test_export_then_score_files_reproduces_scores(tmp_path, data):
    full, states = run_with_states(BASE, data)
    save_checkpoint(tmp_path / "final", states[-1])
    trained = load_trained(tmp_path / "final")
    written = export_images(data, tmp_path / "npy", "test", "npy")
    assert len(written) == 24 and (tmp_path / "npy" / "labels.csv").is_file()
    files = list_inputs([tmp_path / "npy"])
    assert files == written  # sorted: the data set's order
    images = trained.preprocessing(files)
    assert torch.equal(images, data.test)  # lossless
    assert trained.score(images)["scores"].tolist() == full[-1]["scores"]
    export_images(data, tmp_path / "png", "test", "png")
    png = trained.preprocessing(list_inputs([tmp_path / "png"]))
    assert (png - data.test).abs().max() <= 1 / 127.5 + 1e-6  # 8-bit rounding


def test_preprocessing_of_new_images(tmp_path):
    from ae4ad.trained import Preprocessing

    grey = Preprocessing(image_size=8, in_channels=1)
    Image.fromarray(np.full((20, 30), 255, np.uint8)).save(tmp_path / "white.png")
    x = grey.load(tmp_path / "white.png")
    assert tuple(x.shape) == (1, 8, 8) and float(x.min()) == 1.0  # resized, in [-1, 1]
    same = np.repeat(np.arange(64, dtype=np.uint8).reshape(8, 8)[..., None], 3, axis=-1)
    Image.fromarray(same).save(tmp_path / "grey-as-rgb.png")  # grey stored as RGB: fine
    assert tuple(grey.load(tmp_path / "grey-as-rgb.png").shape) == (1, 8, 8)
    colour = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=r"colour.png: 3 channels \(RGB\), but the model takes 1"):
        grey.load(tmp_path / "colour.png")
    rgb = Preprocessing(image_size=8, in_channels=3)
    assert tuple(rgb.load(tmp_path / "colour.png").shape) == (3, 8, 8)
    with pytest.raises(DataError, match="white.png: 1 channel .* takes 3"):
        rgb.load(tmp_path / "white.png")
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="junk.png: cannot read the image"):
        grey.load(tmp_path / "junk.png")
    np.save(tmp_path / "far.npy", np.full((8, 8), 3.0, np.float32))
    with pytest.raises(DataError, match=r"far.npy: float arrays must hold values in \[-1, 1\]"):
        grey.load(tmp_path / "far.npy")
    np.save(tmp_path / "two.npy", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(DataError, match="two.npy: 2 channels"):
        grey.load(tmp_path / "two.npy")
    np.save(tmp_path / "big.npy", np.zeros((16, 16), np.float32))
    assert tuple(grey.load(tmp_path / "big.npy").shape) == (1, 8, 8)  # resized


def test_overlay_shows_image_and_map_side_by_side():
    image = np.zeros((1, 8, 8), np.float32)
    amap = np.zeros((1, 8, 8), np.float32)
    amap[0, 2:4, 2:4] = 1.0
    picture = overlay(image, amap, vmax=1.0, scale=4)
    assert picture.size == ((8 + 2 + 8) * 4, 8 * 4) and picture.mode == "RGB"
    pixels = np.asarray(picture)
    assert (pixels[12, (10 + 2) * 4 + 1] != pixels[0, 0]).any()  # the hot spot is coloured
