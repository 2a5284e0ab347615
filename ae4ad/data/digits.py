"""scikit-learn's bundled 8 x 8 handwritten digits as a tiny anomaly-detection data set.

One digit is normal, the other nine are anomalies. The images of the normal digit are
split at random (``seed``) into training (70 %) and normal test images (30 %); the test set
gets as many abnormal images, drawn from the other digits with the same seed. ``n_val``
normal images are moved from the training part into a validation split. Images are
up-sampled bilinearly to ``image_size`` and scaled from [0, 16] to [-1, 1]. No download.

Example:
    >>> from ae4ad.data import load_dataset
    >>> ds = load_dataset("digits", normal_digit=3, image_size=16, n_val=10)
    >>> s = ds.summary()
    >>> s["n_test_normal"] == s["n_test_abnormal"], s["n_val"], s["image_size"]
    (True, 10, 16)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ae4ad.data.base import AnomalyDataset, DataError, register_source


@register_source("digits")
def load_digits_anomaly(
    normal_digit: int = 0,
    image_size: int = 32,
    n_val: int = 0,
    seed: int = 0,
    test_fraction: float = 0.3,
) -> AnomalyDataset:
    """Digit ``normal_digit`` is normal, all others abnormal (see the module docstring).

    Args:
        normal_digit: 0..9.
        image_size: side S of the square images (bilinear resize from 8 x 8).
        n_val: normal images held out of training as a validation split (0: no val).
        seed: seed of the random split and of the choice of abnormal test images.
        test_fraction: share of the normal images used as normal test images.
    """
    from sklearn.datasets import load_digits

    if isinstance(normal_digit, bool) or normal_digit not in range(10):
        raise DataError(f"normal_digit must be an integer 0..9, got {normal_digit!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction!r}")

    digits = load_digits()
    images = digits.images.astype(np.float32)  # N x 8 x 8 in [0, 16]
    target = digits.target
    rng = np.random.default_rng(seed)
    normal_idx = rng.permutation(np.flatnonzero(target == normal_digit))
    n_test = max(1, round(test_fraction * len(normal_idx)))
    test_normal, train_idx = normal_idx[:n_test], normal_idx[n_test:]
    if isinstance(n_val, bool) or not isinstance(n_val, int) or not 0 <= n_val < len(train_idx):
        raise DataError(
            f"n_val must be an integer in [0, {len(train_idx) - 1}] "
            f"(digit {normal_digit} has {len(train_idx)} training images), got {n_val!r}"
        )
    val_idx, train_idx = train_idx[:n_val], train_idx[n_val:]
    test_abnormal = rng.choice(np.flatnonzero(target != normal_digit), n_test, replace=False)

    def prepare(idx: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images[np.sort(idx)]).unsqueeze(1) / 8.0 - 1.0
        if image_size != x.shape[-1]:
            x = F.interpolate(
                x, size=(image_size, image_size), mode="bilinear", align_corners=False
            )
        return x.clamp_(-1.0, 1.0).contiguous()

    test = torch.cat([prepare(test_normal), prepare(test_abnormal)])
    labels = torch.cat(
        [torch.zeros(n_test, dtype=torch.long), torch.ones(n_test, dtype=torch.long)]
    )
    return AnomalyDataset(
        name=f"digits-{normal_digit}",
        description=(
            f"scikit-learn digits: {normal_digit} normal, other digits abnormal, "
            f"{image_size} px from 8 px"
        ),
        train=prepare(train_idx),
        test=test,
        test_labels=labels,
        val=prepare(val_idx) if n_val else None,
        val_labels=torch.zeros(n_val, dtype=torch.long) if n_val else None,
        info={"source": "digits", "normal_digit": normal_digit, "seed": seed},
    )
