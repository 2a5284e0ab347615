import math

import numpy as np
import pytest
import torch

from ae4ad import AnomalyDataset, ConfigError, fit
from ae4ad.scoring import image_metrics
from ae4ad.train import default_eval_every


def tiny_dataset(with_masks: bool = True, with_val: bool = True) -> AnomalyDataset:
    """Smooth blobs as normal images; abnormal ones carry a bright square."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")

    def normal(n):
        c = torch.rand(n, 2, generator=g) * 0.6 - 0.3
        r = (xx[None] - c[:, :1, None]) ** 2 + (yy[None] - c[:, 1:, None]) ** 2
        return (torch.exp(-r / 0.3) * 2 - 1)[:, None].float()

    test = normal(24)
    labels = torch.tensor([0] * 12 + [1] * 12)
    masks = torch.zeros(24, 1, 16, 16)
    masks[12:, :, 5:9, 5:9] = 1
    test = torch.where(masks > 0, torch.ones_like(test), test)
    val = normal(8) if with_val else None
    return AnomalyDataset(
        name="tiny",
        description="blobs with squares",
        train=normal(48),
        test=test,
        test_labels=labels,
        test_masks=masks if with_masks else None,
        val=val,
    )


BASE = {
    "dataset": "tiny",
    "model": "ae",
    "model_params": {"latent_dim": 2, "num_blocks": 2, "hidden_dim": 16, "base_width": 4},
    "epochs": 4,
    "batch_size": 16,
    "eval_every": 2,
    "seed": 0,
    "threads": 1,
    "device": "cpu",  # exact comparisons are CPU facts (CUDA: tests/test_device.py)
}


def test_records_per_evaluation_and_final_payload():
    records = list(fit(BASE, dataset=tiny_dataset()))
    assert [r["epoch"] for r in records] == [2, 4]
    assert [r["status"] for r in records] == ["running", "completed"]
    final = records[-1]
    assert final["is_final"] and not records[0]["is_final"]
    for key in (
        "train_loss", "elapsed_s", "images_per_s", "auc", "ap", "mean_score_normal",
        "mean_score_abnormal", "pixel_ap", "pixel_auc", "best_dice", "recon_error_train_normal",
        "recon_error_val_normal", "recon_error_test_normal", "recon_error_test_abnormal",
        "latent_entropy_gaussian", "latent_entropy_knn", "latent_effective_rank",
        "latent_participation_ratio", "latent_intrinsic_dim",
        "image_intrinsic_dim_twonn", "image_intrinsic_dim_mle",
    ):  # fmt: skip
        assert key in final, key
    assert final["dice_threshold_source"] == "test-optimal"
    assert len(final["scores"]) == 24 and final["labels"] == [0] * 12 + [1] * 12
    # the stored scores reproduce the metrics
    again = image_metrics(np.array(final["scores"]), np.array(final["labels"]))
    assert again["auc"] == pytest.approx(final["auc"]) and again["ap"] == pytest.approx(final["ap"])
    ex = final["examples"]
    assert len(ex["inputs"]) == len(ex["reconstructions"]) == len(ex["masks"]) == 4
    assert ex["labels"] == [0, 0, 1, 1]
    assert np.array(ex["anomaly_maps"]).shape == (4, 1, 16, 16)
    assert "scores" not in records[0]


def test_without_eval_every_a_run_evaluates_every_fifth_of_its_epochs():
    config = {k: v for k, v in BASE.items() if k != "eval_every"} | {"epochs": 11}
    records = list(fit(config, dataset=tiny_dataset()))
    assert default_eval_every(11) == 2
    assert [r["epoch"] for r in records] == [2, 4, 6, 8, 10, 11]
    short = list(fit(config | {"epochs": 3}, dataset=tiny_dataset()))
    assert [r["epoch"] for r in short] == [1, 2, 3]


def test_same_seed_same_records():
    strip = lambda rs: [  # noqa: E731
        {k: v for k, v in r.items() if k not in ("elapsed_s", "images_per_s", "train_time_s")}
        for r in rs
    ]
    a = strip(fit(BASE, dataset=tiny_dataset()))
    b = strip(fit(BASE, dataset=tiny_dataset()))
    assert a == b
    c = strip(fit({**BASE, "seed": 1}, dataset=tiny_dataset()))
    assert c[-1]["train_loss"] != a[-1]["train_loss"]


def test_no_masks_no_pixel_metrics():
    final = list(fit(BASE, dataset=tiny_dataset(with_masks=False, with_val=False)))[-1]
    assert final["pixel_ap"] is None and final["best_dice"] is None
    assert final["recon_error_val_normal"] is None
    assert final["examples"]["masks"] is None


def test_validation_masks_choose_the_dice_threshold():
    ds = tiny_dataset()
    ds.val, ds.val_labels, ds.val_masks = ds.test[8:16], ds.test_labels[8:16], ds.test_masks[8:16]
    final = list(fit(BASE, dataset=ds))[-1]
    assert final["dice_threshold_source"] == "val"
    assert 0 <= final["best_dice"] <= 1


@pytest.mark.parametrize("model", ["vae", "memae", "ceae", "constrained_ae", "ae_spatial"])
def test_every_model_trains(model):
    final = list(fit({**BASE, "model": model, "epochs": 2}, dataset=tiny_dataset()))[-1]
    assert final["status"] == "completed"
    assert math.isfinite(final["train_loss"])


def test_divergence_is_a_status_not_a_crash():
    records = list(fit({**BASE, "lr": 1e30, "epochs": 6}, dataset=tiny_dataset()))
    assert records[-1]["status"] == "diverged"
    assert records[-1]["is_final"]
    assert "training loss became" in records[-1]["error"]


def test_non_finite_output_with_finite_loss_is_diverged(monkeypatch):
    from ae4ad.models import AE

    real_forward = AE.forward

    def forward(self, x):
        out = real_forward(self, x)
        if not self.training:  # finite while training, NaN when evaluated
            out["x_hat"] = out["x_hat"] * float("nan")
        return out

    monkeypatch.setattr(AE, "forward", forward)
    records = list(fit(BASE, dataset=tiny_dataset()))
    assert len(records) == 1
    assert records[0]["status"] == "diverged" and records[0]["epoch"] == 2
    assert "not finite" in records[0]["error"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"epochs": 0}, "epochs: expected a positive integer, got 0"),
        ({"lr": -1}, "lr: expected a positive number, got -1"),
        ({"score": "l3"}, "score: expected one of l2, l1, ssim, got 'l3'"),
        ({"epoch": 3}, "unknown training config key 'epoch'"),
    ],
)
def test_bad_config(change, message):
    with pytest.raises(ConfigError, match=message):
        next(fit({**BASE, **change}, dataset=tiny_dataset()))


def test_loads_the_dataset_by_name_when_not_given():
    config = {
        **BASE,
        "dataset": "digits",
        "dataset_params": {"image_size": 16},
        "epochs": 1,
        "eval_every": 1,
    }
    final = list(fit(config))[-1]
    assert final["status"] == "completed" and 0 <= final["auc"] <= 1
    assert isinstance(torch.get_num_threads(), int)


def test_labelled_validation_split_gives_val_auc_and_val_ap():
    ds = tiny_dataset()
    ds.val, ds.val_labels, ds.val_masks = ds.test[8:16], ds.test_labels[8:16], ds.test_masks[8:16]
    records = list(fit(BASE, dataset=ds))
    final = records[-1]
    expected = image_metrics(np.asarray(final["scores"])[8:16], ds.val_labels.numpy())
    # the validation images are test images 8..15, scored by the same model: same numbers
    assert final["val_auc"] == pytest.approx(expected["auc"])
    assert final["val_ap"] == pytest.approx(expected["ap"])
    assert all("val_auc" in r for r in records)
    # a normal-only validation split has no val_auc
    assert "val_auc" not in list(fit(BASE, dataset=tiny_dataset()))[-1]


def test_a_trained_ae_detects_phantom_lesions_better_than_chance():
    """The promise the whole harness rests on, on a small phantom in a few seconds."""
    from ae4ad import load_dataset

    data = load_dataset(
        "phantom", image_size=32, n_train=256, n_val=0, n_test_normal=48, n_test_abnormal=48,
        lesion_radius=(3.0, 5.0), seed=0,
    )  # fmt: skip
    config = {
        "dataset": "phantom",
        "model": "ae",
        "model_params": {"latent_dim": 8, "num_blocks": 3, "base_width": 8, "hidden_dim": 64},
        "epochs": 6,
        "batch_size": 32,
        "eval_every": 6,
        "seed": 0,
        "threads": 1,
    }
    final = list(fit(config, dataset=data))[-1]
    assert final["status"] == "completed"
    assert final["auc"] > 0.6
    assert final["mean_score_abnormal"] > final["mean_score_normal"]
    scores, labels = np.array(final["scores"]), np.array(final["labels"])
    assert scores[labels == 1].mean() > scores[labels == 0].mean()


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """2 |P & T| / (|P| + |T|), by hand."""
    return 2 * float((pred & target).sum()) / float(pred.sum() + target.sum())


def test_best_dice_is_the_test_dice_at_the_validation_threshold():
    """Where the validation optimum (0.5) differs from the test optimum (0.8), best_dice
    is the Dice on test at the validation threshold, not the test-optimal Dice."""
    from ae4ad.scoring import pixel_metrics

    test_maps = np.array([0.9, 0.8, 0.6, 0.55, 0.1, 0.05]).reshape(1, 1, 1, 6)
    test_masks = np.array([1, 1, 0, 0, 0, 0]).reshape(1, 1, 1, 6)
    val_maps = np.array([0.9, 0.6, 0.5, 0.2]).reshape(1, 1, 1, 4)
    val_masks = np.array([1, 1, 1, 0]).reshape(1, 1, 1, 4)
    # the optima, by hand
    assert dice(test_maps >= 0.8, test_masks > 0) == 1.0
    assert dice(val_maps >= 0.5, val_masks > 0) == 1.0
    at_val = dice(test_maps >= 0.5, test_masks > 0)
    assert at_val == pytest.approx(2 / 3)

    out = pixel_metrics(test_maps, test_masks, val_maps, val_masks)
    assert out["dice_threshold_source"] == "val"
    assert out["dice_threshold"] == pytest.approx(0.5)
    assert out["best_dice"] == pytest.approx(at_val)
    # without validation masks the threshold is the test-optimal one
    out = pixel_metrics(test_maps, test_masks)
    assert out["dice_threshold_source"] == "test-optimal"
    assert out["dice_threshold"] == pytest.approx(0.8)
    assert out["best_dice"] == 1.0


def test_fit_reports_the_test_dice_at_the_validation_threshold(monkeypatch):
    """Through fit: the record's best_dice is the Dice of the test maps at the threshold
    chosen on the validation maps (recomputed by hand from what fit scored)."""
    import ae4ad.train

    seen = {}
    real = ae4ad.train.pixel_metrics

    def spy(maps, masks, val_maps=None, val_masks=None):
        seen.update(maps=maps, masks=masks, val_maps=val_maps)
        return real(maps, masks, val_maps, val_masks)

    monkeypatch.setattr(ae4ad.train, "pixel_metrics", spy)
    ds = tiny_dataset()
    ds.val, ds.val_labels, ds.val_masks = ds.test[8:16], ds.test_labels[8:16], ds.test_masks[8:16]
    final = list(fit(BASE, dataset=ds))[-1]
    assert final["dice_threshold_source"] == "val"
    assert seen["val_maps"] is not None and seen["val_maps"].shape == (8, 1, 16, 16)
    threshold = final["dice_threshold"]
    expected = dice(seen["maps"] >= threshold, seen["masks"] > 0.5)
    assert final["best_dice"] == pytest.approx(expected)
