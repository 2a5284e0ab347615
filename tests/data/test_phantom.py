"""Tests of the synthetic phantom data source (ae4ad/data/phantom.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from ae4ad.data import DataError, load_dataset
from ae4ad.data.phantom import (
    MAX_TEXTURE_RANK,
    PhantomParams,
    factor_names,
    generate_images,
    load_phantom,
    texture_modes,
)
from ae4ad.latent import image_intrinsic_dimension

SMALL = dict(n_train=24, n_val=6, n_test_normal=8, n_test_abnormal=16)


@pytest.fixture(scope="module")
def ds():
    return load_phantom(**SMALL, seed=3)


def test_shapes_ranges_dtypes(ds):
    s = 32
    assert ds.train.shape == (24, 1, s, s) and ds.train.dtype == torch.float32
    assert ds.val.shape == (6, 1, s, s) and ds.val.dtype == torch.float32
    assert ds.test.shape == (24, 1, s, s) and ds.test.dtype == torch.float32
    assert ds.test_labels.dtype == torch.long
    assert ds.test_labels.tolist() == [0] * 8 + [1] * 16
    assert ds.test_masks.shape == (24, 1, s, s) and ds.test_masks.dtype == torch.float32
    assert set(torch.unique(ds.test_masks).tolist()) == {0.0, 1.0}
    assert ds.val_labels.tolist() == [0] * 6 and ds.val_masks is None
    for t in (ds.train, ds.val, ds.test):
        assert float(t.min()) == -1.0 and float(t.max()) <= 1.0
        # corners are background, exactly -1; the centre is mostly tissue, well above it
        assert torch.all(t[:, 0, 0, 0] == -1.0) and torch.all(t[:, 0, -1, -1] == -1.0)
        assert torch.all(t[:, 0, 10:22, 10:22].mean(dim=(1, 2)) > -0.5)
    assert ds.info["factor_names"] == factor_names("brain") and len(ds.info["factor_names"]) >= 10
    assert ds.info["intrinsic_dim"] == 6 and ds.info["varied_factors"] == factor_names()[:6]
    assert ds.info["params"]["seed"] == 3 and ds.info["params"]["lesion_radius"] == [2.0, 4.0]
    assert ds.summary()["n_test_abnormal"] == 16


def test_registered_source_and_no_val():
    d = load_dataset("phantom", n_train=3, n_val=0, n_test_normal=1, n_test_abnormal=1)
    assert d.name == "phantom" and d.val is None and d.val_labels is None
    assert d.train.shape == (3, 1, 32, 32)


def test_determinism_and_seeds():
    a = load_phantom(**SMALL, seed=7)
    b = load_phantom(**SMALL, seed=7)
    c = load_phantom(**SMALL, seed=8)
    for name in ("train", "val", "test", "test_masks"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for name in ("train", "val", "test"):
        assert not torch.equal(getattr(a, name), getattr(c, name)), name
    assert not torch.equal(a.test_masks, c.test_masks)


def test_splits_use_independent_streams():
    base = load_phantom(**SMALL, seed=5)
    other = load_phantom(n_train=24, n_val=2, n_test_normal=3, n_test_abnormal=30, seed=5)
    assert torch.equal(base.train, other.train)
    # the first images of a split do not depend on how many are drawn
    assert torch.equal(base.val[:2], other.val)
    assert torch.equal(base.test[:3], other.test[:3])
    assert torch.equal(base.test[8:], other.test[3:19])
    assert torch.equal(base.test_masks[8:], other.test_masks[3:19])
    longer = load_phantom(n_train=40, n_val=0, n_test_normal=1, n_test_abnormal=0, seed=5)
    assert torch.equal(base.train, longer.train[:24])
    # train and val are different draws
    assert not torch.equal(base.train[:6], base.val)


def test_masks_only_on_abnormal_images_and_inside_the_brain(ds):
    normal = ds.test_labels == 0
    assert float(ds.test_masks[normal].sum()) == 0.0
    areas = ds.test_masks[~normal].sum(dim=(1, 2, 3))
    assert torch.all(areas >= 4), areas
    p = PhantomParams(**SMALL, seed=3)
    ab = generate_images(16, "test_abnormal", p, lesions=True)
    assert torch.equal(ab.images, ds.test[8:]) and torch.equal(ab.masks, ds.test_masks[8:])
    region = ab.region.float()
    assert float((ab.masks * (1 - region)).sum()) == 0.0, "mask pixels outside brain tissue"
    # the lesion-free version of the same images has brain tissue under every mask
    clean = generate_images(16, "test_abnormal", p, lesions=False).images
    under = (clean * ab.masks).sum(dim=(1, 2, 3)) / ab.masks.sum(dim=(1, 2, 3))
    assert torch.all(under > -0.5), under


def test_lesions_change_pixels_only_near_the_mask():
    p = PhantomParams(n_test_abnormal=40, seed=11)
    clean = generate_images(40, "test_abnormal", p, lesions=False)
    sick = generate_images(40, "test_abnormal", p, lesions=True)
    assert np.array_equal(clean.factors, sick.factors)
    assert float(clean.masks.sum()) == 0.0
    diff = (sick.images - clean.images)[:, 0].numpy()
    masks = sick.masks[:, 0].numpy() > 0
    signs = []
    for i in range(40):
        assert masks[i].any()
        dist = distance_transform_edt(~masks[i])  # pixels to the nearest mask pixel
        assert np.all(diff[i][dist > 3] == 0.0), f"image {i} changed far from its mask"
        inside = diff[i][masks[i]]
        assert np.abs(inside).mean() > 0.3, f"image {i}: lesion barely visible"
        signs.append(np.sign(inside.mean()))
    assert 1.0 in signs and -1.0 in signs, "lesions should be both brighter and darker"


def test_train_and_val_have_no_lesions(ds):
    p = PhantomParams(**SMALL, seed=3)
    for split, n, images in (("train", 24, ds.train), ("val", 6, ds.val)):
        plain = generate_images(n, split, p, lesions=False)
        with_lesions = generate_images(n, split, p, lesions=True)
        assert torch.equal(images, plain.images)
        # the lesion code path would have changed every image of the split
        changed = (with_lesions.images != plain.images).flatten(1).any(dim=1)
        assert bool(changed.all()) and float(with_lesions.masks.sum()) > 0


def test_intrinsic_dim_zero_leaves_only_texture_and_noise():
    flat = load_phantom(**SMALL, intrinsic_dim=0, texture=0.0, noise=0.0)
    assert torch.equal(flat.train, flat.train[:1].expand_as(flat.train))
    assert torch.equal(flat.val, flat.train[: len(flat.val)])
    noisy = load_phantom(**SMALL, intrinsic_dim=0)
    diff = noisy.train - flat.train[:1]
    assert float(diff.abs().max()) > 0.0
    # texture (0.08) and noise (0.02) on the [0, 1] scale: small, zero in the background
    assert float(diff.std()) < 0.15
    assert torch.all(diff[:, :, 0, :] == 0) and torch.all(diff[:, :, :, 0] == 0)
    one = load_phantom(**SMALL, intrinsic_dim=1, texture=0.0, noise=0.0)
    assert not torch.equal(one.train[0], one.train[1])


def test_only_the_first_k_factors_vary():
    p = PhantomParams(intrinsic_dim=4, seed=2)
    f = generate_images(50, "train", p).factors
    assert f.shape == (50, len(factor_names()))
    assert np.all(f[:, :4].std(axis=0) > 0)
    assert np.all(f[:, 4:] == f[:1, 4:])
    full = generate_images(50, "train", PhantomParams(intrinsic_dim=14, seed=2)).factors
    assert np.array_equal(full[:, :4], f[:, :4])


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"intrinsic_dim": 15}, r"intrinsic_dim=15 .*0\.\.14"),
        ({"intrinsic_dim": -1}, r"intrinsic_dim=-1 .*0\.\.14"),
        ({"intrinsic_dim": 2.5}, r"intrinsic_dim=2\.5 .*int"),
        ({"intrinsic_dim": 13, "variant": "chest"}, r"intrinsic_dim=13 .*0\.\.12"),
        ({"image_size": 8}, r"image_size=8 .*16\.\.512"),
        ({"image_size": True}, r"image_size=True"),
        ({"n_train": 0}, r"n_train=0 .*>= 1"),
        ({"n_val": -2}, r"n_val=-2 .*>= 0"),
        ({"n_test_normal": 0, "n_test_abnormal": 0}, r"n_test_normal \+ n_test_abnormal >= 1"),
        ({"texture": -0.1}, r"texture=-0\.1 .*\[0, 1\.0\]"),
        ({"noise": "lots"}, r"noise='lots' .*number"),
        ({"texture_sigma": 0}, r"texture_sigma=0 .*\(0, 32\]"),
        ({"lesion_radius": (4, 2)}, r"lesion_radius=\(4, 2\) .*low <= high"),
        ({"lesion_radius": (0.5, 2)}, r"lesion_radius=\(0\.5, 2\) .*1\.0 <= low"),
        ({"lesion_radius": "big"}, r"lesion_radius='big' .*a number or a pair"),
        ({"lesion_contrast": (0.5, 1.5)}, r"lesion_contrast=\(0\.5, 1\.5\) .*<= 1\.0"),
        ({"lesion_contrast": 0}, r"lesion_contrast=0 .*0\.0 < low"),
        ({"variant": "knee"}, r"variant='knee' .*'brain', 'chest'"),
        ({"seed": -1}, r"seed=-1 .*>= 0"),
        ({"texture_rank": -1}, r"texture_rank=-1 .*null .*0\.\.128"),
        ({"texture_rank": 129}, r"texture_rank=129 .*0\.\.128"),
        ({"texture_rank": 2.0}, r"texture_rank=2\.0 .*an int"),
        ({"noise_sigma": -1}, r"noise_sigma=-1 .*\[0, 32\]"),
        ({"latent_dim": 4}, r"unknown parameter\(s\) latent_dim; allowed: image_size"),
    ],
)
def test_param_validation(params, expected):
    with pytest.raises(DataError, match=expected):
        load_phantom(**{"n_train": 2, "n_test_normal": 1, "n_test_abnormal": 1, **params})


@pytest.mark.parametrize("size", [32, 64])
def test_image_sizes(size):
    d = load_phantom(image_size=size, n_train=4, n_val=2, n_test_normal=2, n_test_abnormal=30)
    for t in (d.train, d.val, d.test, d.test_masks):
        assert t.shape[-2:] == (size, size)
    # lesion radius is 2..4 px at 32 px and scales with the image: area ~ pi r^2
    area = d.test_masks[2:].sum(dim=(1, 2, 3)) * (32 / size) ** 2
    assert 6 < float(area.mean()) < 60, area


def test_lesion_area_scales_with_image_size():
    a32 = load_phantom(image_size=32, n_train=1, n_val=0, n_test_normal=0, n_test_abnormal=40)
    a64 = load_phantom(image_size=64, n_train=1, n_val=0, n_test_normal=0, n_test_abnormal=40)
    ratio = float(a64.test_masks.sum()) / float(a32.test_masks.sum())
    assert 3.0 < ratio < 5.0, ratio


def test_texture_parameter_changes_only_tissue():
    base = load_phantom(**SMALL, texture=0.0, noise=0.0)
    tex = load_phantom(**SMALL, texture=0.2, noise=0.0)
    diff = tex.train - base.train
    assert float(diff.abs().max()) > 0.1
    assert torch.all(diff[:, :, :2, :] == 0)  # top rows are background


@pytest.mark.parametrize("variant", ["brain", "chest"])
@pytest.mark.parametrize("size", [32, 64])
def test_every_abnormal_image_has_a_visible_lesion(variant, size):
    p = PhantomParams(variant=variant, image_size=size, intrinsic_dim=len(factor_names(variant)))
    ab = generate_images(150, "test_abnormal", p, lesions=True)
    area = ab.masks.sum(dim=(1, 2, 3)) * (32 / size) ** 2
    assert float(area.min()) >= 4, area.min()


def test_chest_variant():
    d = load_phantom(variant="chest", **SMALL)
    assert d.name == "phantom-chest" and d.info["factor_names"] == factor_names("chest")
    assert d.train.shape == (24, 1, 32, 32) and float(d.train.min()) == -1.0
    p = PhantomParams(variant="chest", **SMALL)
    ab = generate_images(16, "test_abnormal", p, lesions=True)
    assert torch.equal(ab.images, d.test[8:])
    assert torch.all(ab.masks.sum(dim=(1, 2, 3)) >= 4)
    assert float((ab.masks * (1 - ab.region.float())).sum()) == 0.0


def test_labelled_validation_split():
    kw = dict(n_train=4, n_val=3, n_test_normal=2, n_test_abnormal=2, seed=3)
    plain = load_dataset("phantom", **kw)
    labelled = load_dataset("phantom", n_val_abnormal=5, **kw)
    assert labelled.val_labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert labelled.val_masks.shape == labelled.val.shape
    assert labelled.val_masks[:3].sum() == 0
    assert all(labelled.val_masks[i].sum() > 0 for i in range(3, 8))
    # its own random streams: the other splits and the normal validation images are unchanged
    assert torch.equal(plain.val, labelled.val[:3])
    for name in ("train", "test", "test_masks"):
        assert torch.equal(getattr(plain, name), getattr(labelled, name))
    # the abnormal validation images are not the abnormal test images
    assert not torch.equal(labelled.val[3:5], labelled.test[2:4])
    assert plain.val_masks is None and plain.val_labels.sum() == 0


# ----------------------------------------------------------------------------- known answer


def test_default_images_are_those_of_before_texture_rank():
    """Regression pin: values of the default images (no texture_rank, white noise) as
    generated before the finite texture existed (float32 sums, so rel 1e-6)."""
    d = load_phantom(n_train=4, n_val=0, n_test_normal=1, n_test_abnormal=1)
    assert float(d.train.double().sum()) == pytest.approx(-2151.4207177758217, rel=1e-6)
    assert float(d.test[1].double().sum()) == pytest.approx(-580.8882155418396, rel=1e-6)
    pinned = [0.677451491355896, 0.659351110458374, 0.5709755420684814, 0.582545280456543]
    assert d.train[0, 0, 16, 10:14].tolist() == pytest.approx(pinned, abs=1e-6)
    same = load_phantom(
        n_train=4, n_val=0, n_test_normal=1, n_test_abnormal=1, texture_rank=None, noise_sigma=0
    )
    assert torch.equal(same.train, d.train) and torch.equal(same.test, d.test)
    assert d.info["texture_rank"] is None and d.info["known_dim"] is None


@pytest.mark.parametrize(
    ("params", "known"),
    [
        ({"intrinsic_dim": 4, "texture_rank": 12}, 16),
        ({"intrinsic_dim": 0, "texture_rank": 8}, 8),
        ({"intrinsic_dim": 5, "texture_rank": 0}, 5),
        ({"intrinsic_dim": 3, "texture": 0.0}, 3),  # no texture: the shapes alone
        ({"intrinsic_dim": 3, "texture": 0.0, "texture_rank": 9}, 3),
        ({"intrinsic_dim": 3}, None),  # the default texture has no finite dimension
    ],
)
def test_known_dim_in_info(params, known):
    d = load_phantom(n_train=2, n_val=0, n_test_normal=1, n_test_abnormal=1, **params)
    assert d.info["known_dim"] == known
    assert PhantomParams(**params).known_dim == known


def test_finite_texture_spans_exactly_texture_rank_directions():
    """With the shapes fixed (intrinsic_dim 0), no noise and no clipping, the normal images
    are an affine image of texture_rank coefficients: the centred images have exactly
    texture_rank non-zero singular values."""
    for rank in (1, 5, 12):
        d = load_phantom(
            n_train=200, n_val=0, n_test_normal=1, n_test_abnormal=0,
            intrinsic_dim=0, texture_rank=rank, texture=0.01, noise=0.0,
        )  # fmt: skip
        x = d.train.flatten(1).double().numpy()
        sv = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
        assert int((sv > 1e-4 * sv[0]).sum()) == rank, sv[: rank + 2]


def test_a_larger_texture_rank_adds_modes_to_the_same_images():
    kw = dict(n_train=60, n_val=0, n_test_normal=1, n_test_abnormal=0, texture=0.01, noise=0.0)
    four = load_phantom(intrinsic_dim=0, texture_rank=4, **kw).train
    five = load_phantom(intrinsic_dim=0, texture_rank=5, **kw).train
    diff = (five - four).flatten(1).double().numpy()
    sv = np.linalg.svd(diff, compute_uv=False)  # one more mode: a rank-one difference
    assert sv[0] > 0 and sv[1] < 1e-4 * sv[0], sv[:3]
    assert texture_modes(5) == [(1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]
    assert len(set(texture_modes(MAX_TEXTURE_RANK))) == MAX_TEXTURE_RANK
    assert (0, 0) not in texture_modes(MAX_TEXTURE_RANK)


# The image intrinsic dimension (TwoNN and MLE, 1000 images) against the known dimension,
# texture 0.1 per mode and white noise 0.005. Measured ratio estimate / known over seeds
# 0-4: 0.89-1.12 at known 4 and 8, 0.79-0.87 at 16 (both estimators). Tolerances: +-20 %
# up to 8; at 16, 0.7-1.0: both estimators read low at that dimension with 1000 points
# (TwoNN 0.83-0.88, MLE 0.81-0.82 on 1000 Gaussian points in R^16), whatever the data.
@pytest.mark.parametrize(
    ("k", "t", "low", "high"),
    [(4, 0, 0.8, 1.2), (2, 2, 0.8, 1.2), (0, 8, 0.8, 1.2), (2, 6, 0.8, 1.2), (4, 12, 0.7, 1.0)],
)
def test_image_intrinsic_dimension_finds_the_known_dimension(k, t, low, high):
    d = load_phantom(
        n_train=1000, n_val=0, n_test_normal=1, n_test_abnormal=0,
        intrinsic_dim=k, texture_rank=t, texture=0.1, noise=0.005, seed=7,
    )  # fmt: skip
    known = d.info["known_dim"]
    assert known == k + t
    for name, value in image_intrinsic_dimension(d.train.numpy()).items():
        assert low * known <= value <= high * known, (name, value, known)


def test_noise_sigma_smooths_the_noise():
    kw = dict(n_train=20, n_val=0, n_test_normal=1, n_test_abnormal=0, texture=0.0)
    clean = load_phantom(noise=0.0, **kw).train

    def neighbour_correlation(images: torch.Tensor) -> float:
        n = (images - clean)[:, 0, 8:24, 8:24].numpy()  # inside the head
        a, b = n[:, :, :-1].ravel(), n[:, :, 1:].ravel()
        return float(np.corrcoef(a, b)[0, 1])

    white = load_phantom(noise=0.05, **kw).train
    smooth = load_phantom(noise=0.05, noise_sigma=1.5, **kw).train
    assert abs(neighbour_correlation(white)) < 0.1
    assert neighbour_correlation(smooth) > 0.4
    # unit standard deviation per image before the amplitude, as the white noise has
    ratio = float((smooth - clean).std() / (white - clean).std())
    assert 0.8 < ratio < 1.25, ratio


def test_a_trials_final_record_carries_known_dim():
    from ae4ad.train import fit

    config = {
        "dataset": "phantom", "model": "ae", "epochs": 2, "eval_every": 1, "batch_size": 16,
        "dataset_params": {"n_train": 32, "n_val": 8, "n_test_normal": 8, "n_test_abnormal": 8,
                           "intrinsic_dim": 2, "texture_rank": 6},
        "model_params": {"latent_dim": 2, "num_blocks": 3, "hidden_dim": 16},
    }  # fmt: skip
    records = list(fit(config))
    assert records[-1]["known_dim"] == 8 and "known_dim" not in records[0]
    config["dataset_params"].pop("texture_rank")
    assert list(fit(config))[-1]["known_dim"] is None
