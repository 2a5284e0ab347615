import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from ae4ad.scoring import (
    anomaly_map,
    best_dice,
    dice_at,
    image_metrics,
    image_scores,
    pixel_metrics,
    ssim_map,
)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=4, max_size=50), st.integers(0, 2**31 - 1))
def test_image_metrics_equal_sklearn(scores, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, len(scores))
    labels[0], labels[1] = 0, 1
    got = image_metrics(np.array(scores), labels)
    assert got["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert got["ap"] == pytest.approx(average_precision_score(labels, scores))


def test_image_metrics_one_class_is_nan():
    got = image_metrics(np.array([0.1, 0.2]), np.array([0, 0]))
    assert np.isnan(got["auc"]) and np.isnan(got["ap"])


def test_best_dice_hand_made_case():
    # 6 pixels, lesion = first three. Thresholds: >=0.9 -> {0}: dice 2*1/(1+3)=0.5;
    # >=0.8 -> {0,1}: 2*2/(2+3)=0.8; >=0.7 -> {0,1,3}: 2*2/(3+3)=0.667;
    # >=0.6 -> {0,1,3,2}: 2*3/(4+3)=0.857 (best); >=0.2 -> 5 px: 6/8; >=0.1 -> all: 6/9.
    scores = np.array([0.9, 0.8, 0.6, 0.7, 0.2, 0.1])
    mask = np.array([1, 1, 1, 0, 0, 0])
    dice, threshold = best_dice(scores, mask)
    assert dice == pytest.approx(6 / 7)
    assert threshold == pytest.approx(0.6)
    assert dice_at(scores, mask, 0.8) == pytest.approx(0.8)


def test_best_dice_matches_brute_force():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(500), 2)  # ties on purpose
    mask = rng.random(500) < 0.2
    brute = max(dice_at(scores, mask, t) for t in np.unique(scores))
    assert best_dice(scores, mask)[0] == pytest.approx(brute)


def test_pixel_metrics_uses_validation_threshold():
    rng = np.random.default_rng(1)
    masks = (rng.random((4, 1, 8, 8)) < 0.1).astype(np.float32)
    maps = masks + rng.normal(0, 0.3, masks.shape)
    test_optimal = pixel_metrics(maps, masks)
    assert test_optimal["dice_threshold_source"] == "test-optimal"
    with_val = pixel_metrics(maps, masks, maps[:2], masks[:2])
    assert with_val["dice_threshold_source"] == "val"
    assert with_val["best_dice"] <= test_optimal["best_dice"] + 1e-12
    assert test_optimal["pixel_ap"] == pytest.approx(
        average_precision_score(masks.ravel() > 0.5, maps.ravel())
    )


def test_anomaly_maps():
    x = torch.zeros(2, 3, 16, 16)
    x_hat = torch.full_like(x, 0.5)
    assert torch.allclose(anomaly_map(x, x_hat, "l2"), torch.full((2, 1, 16, 16), 0.25))
    assert torch.allclose(anomaly_map(x, x_hat, "l1"), torch.full((2, 1, 16, 16), 0.5))
    assert torch.allclose(image_scores(anomaly_map(x, x_hat, "l2")), torch.full((2,), 0.25))
    same = ssim_map(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16))
    assert same.shape == (1, 1, 16, 16)
    y = torch.rand(1, 1, 16, 16)
    assert torch.allclose(anomaly_map(y, y, "ssim"), torch.zeros(1, 1, 16, 16), atol=1e-5)
    with pytest.raises(ValueError, match="unknown score 'l3'; allowed: l2, l1, ssim"):
        anomaly_map(x, x_hat, "l3")


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4))
def test_ranking_metrics_equal_sklearn_with_ties(seed, decimals):
    from ae4ad.scoring import ranking_metrics

    rng = np.random.default_rng(seed)
    targets = rng.random(400) < 0.15
    targets[:2] = [True, False]
    scores = np.round(rng.random(400) + 0.3 * targets, decimals)  # coarse rounding = many ties
    got = ranking_metrics(scores, targets)
    assert got["auc"] == pytest.approx(roc_auc_score(targets, scores))
    assert got["ap"] == pytest.approx(average_precision_score(targets, scores))
    assert got["best_dice"] == pytest.approx(best_dice(scores, targets)[0])
