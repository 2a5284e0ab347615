"""Anomaly maps, image scores and the paper's metrics (AUC, AP, pixel AP, best Dice).

The anomaly map of an image is its per-pixel reconstruction error (mean over
channels); the image score is the mean of the map.

Example:
    >>> import numpy as np
    >>> from ae4ad.scoring import image_metrics, best_dice
    >>> image_metrics(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    {'auc': 1.0, 'ap': 1.0}
    >>> round(best_dice(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0]))[0], 3)
    1.0
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score

SCORES = ("l2", "l1", "ssim")


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-pixel SSIM (Gaussian window 11, sigma 1.5, reflect padding), N x C x H x W."""
    c = x.shape[1]
    g = _gaussian_window().to(x)
    size = len(g)
    pad = size // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t, (pad, pad, pad, pad), mode="reflect")
        t = F.conv2d(t, g.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
        return F.conv2d(t, g.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )


def anomaly_map(x: torch.Tensor, x_hat: torch.Tensor, score: str = "l2") -> torch.Tensor:
    """Per-pixel anomaly map N x 1 x H x W for ``score`` in ``SCORES``."""
    if score == "l2":
        err = (x - x_hat) ** 2
    elif score == "l1":
        err = (x - x_hat).abs()
    elif score == "ssim":
        err = 1 - ssim_map(x, x_hat)
    else:
        raise ValueError(f"unknown score {score!r}; allowed: {', '.join(SCORES)}")
    return err.mean(dim=1, keepdim=True)


def image_scores(maps: torch.Tensor) -> torch.Tensor:
    """Image score = mean of the anomaly map."""
    return maps.flatten(1).mean(dim=1)


def image_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Image-level AUROC and average precision (scikit-learn); NaN if one class is absent."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if len(np.unique(labels)) < 2 or not np.all(np.isfinite(scores)):
        return {"auc": float("nan"), "ap": float("nan")}
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "ap": float(average_precision_score(labels, scores)),
    }


def _ranked(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort once by decreasing score; true/false positives at every distinct threshold."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(targets).ravel().astype(bool)
    order = np.argsort(-s, kind="stable")
    s_sorted, t_sorted = s[order], t[order]
    last_of_tie = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tp = np.cumsum(t_sorted)[last_of_tie]
    fp = np.cumsum(~t_sorted)[last_of_tie]
    return s_sorted[last_of_tie], tp, fp


def ranking_metrics(scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """AUROC, average precision and best Dice of ``scores`` against binary ``targets``
    from a single sort (for millions of pixels). AUROC and AP equal scikit-learn's
    ``roc_auc_score`` and ``average_precision_score``."""
    thresholds, tp, fp = _ranked(scores, targets)
    positives, negatives = tp[-1], fp[-1]
    if positives == 0 or negatives == 0:
        nan = float("nan")
        return {"auc": nan, "ap": nan, "best_dice": nan, "dice_threshold": nan}
    tpr = np.r_[0.0, tp / positives]
    fpr = np.r_[0.0, fp / negatives]
    auc = float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))
    precision = tp / (tp + fp)
    ap = float(np.sum(np.diff(np.r_[0.0, tp / positives]) * precision))
    dice = 2 * tp / (tp + fp + positives)
    i = int(np.argmax(dice))
    return {
        "auc": auc,
        "ap": ap,
        "best_dice": float(dice[i]),
        "dice_threshold": float(thresholds[i]),
    }


def dice_curve(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dice of ``scores >= t`` for every distinct threshold t (exact, by sorting).

    Returns (thresholds, dice), thresholds in decreasing order.
    """
    thresholds, tp, fp = _ranked(scores, targets)
    positives = tp[-1] if len(tp) else 0
    return thresholds, 2 * tp / (tp + fp + positives)


def best_dice(scores: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """Best Dice over all thresholds and the threshold that achieves it (test-optimal)."""
    thresholds, dice = dice_curve(scores, targets)
    if not np.asarray(targets).any():
        return float("nan"), float("nan")
    i = int(np.argmax(dice))
    return float(dice[i]), float(thresholds[i])


def dice_at(scores: np.ndarray, targets: np.ndarray, threshold: float) -> float:
    """Dice of the binary map ``scores >= threshold``."""
    pred = np.asarray(scores).ravel() >= threshold
    t = np.asarray(targets).ravel().astype(bool)
    denom = pred.sum() + t.sum()
    return float(2 * (pred & t).sum() / denom) if denom else float("nan")


def pixel_metrics(
    maps: np.ndarray,
    masks: np.ndarray,
    val_maps: np.ndarray | None = None,
    val_masks: np.ndarray | None = None,
) -> dict[str, float | str | None]:
    """Pixel-level AP, AUROC and Dice over all test pixels.

    The Dice threshold is chosen on the validation maps when they contain lesion
    pixels (``dice_threshold_source = "val"``); otherwise it is the test-optimal
    threshold, as in the paper (``"test-optimal"``).
    """
    m = np.asarray(maps, dtype=np.float32).ravel()
    t = np.asarray(masks).ravel() > 0.5
    ranked = ranking_metrics(m, t)
    out: dict[str, float | str | None] = {
        "pixel_ap": ranked["ap"],
        "pixel_auc": ranked["auc"],
        "best_dice": ranked["best_dice"],
        "dice_threshold": ranked["dice_threshold"],
        "dice_threshold_source": "test-optimal" if np.isfinite(ranked["auc"]) else None,
    }
    if out["dice_threshold_source"] and val_maps is not None and val_masks is not None:
        if np.asarray(val_masks).any():
            _, threshold = best_dice(val_maps, np.asarray(val_masks) > 0.5)
            out["best_dice"] = dice_at(m, t, threshold)
            out["dice_threshold"] = threshold
            out["dice_threshold_source"] = "val"
    return out
