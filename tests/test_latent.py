"""Known-answer tests for ae4ad.latent (entropies, spectra, intrinsic dimension, predictors)."""

from __future__ import annotations

import doctest
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist
from threadpoolctl import threadpool_limits

import ae4ad.latent as latent
from ae4ad.latent import (
    effective_rank,
    elbow_latent_dim,
    gaussian_entropy,
    image_intrinsic_dimension,
    knn_entropy,
    latent_statistics,
    mle_dimension,
    normalize_latents,
    participation_ratio,
    predict_latent_dim_from_intrinsic_dim,
    twonn_dimension,
)


@pytest.fixture(autouse=True, scope="module")
def _single_blas_thread():
    """One BLAS thread: the estimators work on small matrices, where threads only contend."""
    with threadpool_limits(limits=1):
        yield


STAT_KEYS = {
    "latent_entropy_gaussian",
    "latent_entropy_knn",
    "latent_effective_rank",
    "latent_participation_ratio",
    "latent_intrinsic_dim",
}


def gaussian_sample(d: int, n: int, seed: int) -> tuple[np.ndarray, float]:
    """n samples of N(0, Sigma) with a random SPD Sigma, and the analytic entropy.

    Sigma's eigenvalues lie in [1, 4], so the true entropy is at least
    0.5 * d * log(2 pi e) ~ 1.42 d nats: clearly away from 0, where a relative error
    would be meaningless.
    """
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    lam = rng.uniform(1.0, 4.0, size=d)
    chol = q * np.sqrt(lam)
    z = rng.normal(size=(n, d)) @ chol.T
    entropy = 0.5 * (d * math.log(2 * math.pi * math.e) + float(np.sum(np.log(lam))))
    return z, entropy


def exact_spectrum_data(eigenvalues: list[float], n: int = 500, seed: int = 0) -> np.ndarray:
    """Data whose population covariance is exactly diag(eigenvalues) (up to rounding)."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(n, len(eigenvalues)))
    g -= g.mean(axis=0)
    q, _ = np.linalg.qr(g)  # orthonormal columns, each orthogonal to the ones vector
    return 3.0 + q * np.sqrt(n * np.asarray(eigenvalues))


def sphere(k: int, n: int, seed: int, ambient: int = 64) -> np.ndarray:
    """Uniform points on the unit k-sphere, isometrically embedded in R^ambient."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(n, k + 1))
    y = g / np.linalg.norm(g, axis=1, keepdims=True)
    q, _ = np.linalg.qr(rng.normal(size=(ambient, k + 1)))
    return y @ q.T


def curved_cube(k: int, n: int, seed: int, ambient: int = 64) -> np.ndarray:
    """Uniform k-cube, random linear map to R^ambient, then a smooth nonlinearity."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1.0, 1.0, size=(n, k))
    lin = u @ (rng.normal(size=(k, ambient)) / math.sqrt(k))
    return lin + 0.3 * np.sin(2.0 * lin)


# --------------------------------------------------------------------- entropies


@pytest.mark.parametrize("d", [2, 4, 8, 16])
def test_entropies_match_analytic_gaussian_entropy(d: int) -> None:
    z, truth = gaussian_sample(d, 5000, seed=d)
    assert truth > 1.4 * d
    g = gaussian_entropy(z, normalize=False)
    k = knn_entropy(z, normalize=False)
    assert abs(g - truth) / truth < 0.05, (g, truth)
    assert abs(k - truth) / truth < 0.05, (k, truth)
    # The Gaussian estimate is much tighter than 5 % at n = 5,000.
    assert abs(g - truth) / truth < 0.01


@pytest.mark.parametrize("d", [2, 8])
def test_normalised_entropies_equal_raw_entropy_of_normalised_data(d: int) -> None:
    z, _ = gaussian_sample(d, 2000, seed=10 + d)
    z = 5.0 + 0.37 * z
    centred = z - z.mean(axis=0)
    s = math.sqrt(float(np.sum(centred**2)) / (z.shape[0] * d))
    zn = centred / s
    assert gaussian_entropy(z) == pytest.approx(gaussian_entropy(zn, normalize=False), rel=1e-9)
    assert knn_entropy(z) == pytest.approx(knn_entropy(zn, normalize=False), rel=1e-9)
    # Gaussian: the normalised value is the raw value shifted by -d log(s).
    raw = gaussian_entropy(z, normalize=False)
    assert gaussian_entropy(z) == pytest.approx(raw - d * math.log(s), rel=1e-9)
    zn2, s2 = normalize_latents(z)
    assert s2 == pytest.approx(s, rel=1e-12)
    np.testing.assert_allclose(zn2, zn, atol=1e-12)


def test_normalised_isotropic_gaussian_has_standard_entropy() -> None:
    z = np.random.default_rng(3).normal(scale=7.0, size=(5000, 4))
    expected = 0.5 * 4 * math.log(2 * math.pi * math.e)
    assert gaussian_entropy(z) == pytest.approx(expected, rel=0.01)
    assert gaussian_entropy(z, normalize=False) == pytest.approx(
        expected + 4 * math.log(7.0), rel=0.01
    )


def test_raw_entropies_shift_by_d_log_c() -> None:
    z, _ = gaussian_sample(4, 1000, seed=1)
    for fn in (gaussian_entropy, knn_entropy):
        shift = fn(10.0 * z, normalize=False) - fn(z, normalize=False)
        assert shift == pytest.approx(4 * math.log(10.0), rel=1e-6)


# -------------------------------------------------------------------- invariance


def _scale_free(z: np.ndarray) -> dict[str, float]:
    return {
        "gaussian": gaussian_entropy(z),
        "knn": knn_entropy(z),
        "erank": effective_rank(z),
        "pr": participation_ratio(z),
        "twonn": twonn_dimension(z),
        "mle": mle_dimension(z),
    }


@pytest.mark.parametrize("d", [3, 32])
def test_scale_free_estimators_are_invariant_to_rescaling(d: int) -> None:
    z, _ = gaussian_sample(d, 1500, seed=20 + d)
    base = _scale_free(z)
    assert all(np.isfinite(v) for v in base.values()), base
    for c in (10.0, 0.01):
        scaled = _scale_free(c * z)
        for name, value in base.items():
            assert scaled[name] == pytest.approx(value, rel=1e-6), (name, c)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("c", [1e150, 1e-150])
def test_extreme_scales_neither_overflow_nor_underflow(c: float) -> None:
    z, _ = gaussian_sample(6, 1000, seed=30)
    base = latent_statistics(z)
    scaled = latent_statistics(c * z)
    assert scaled["latent_statistics_reason"] is None
    for key in STAT_KEYS:
        assert scaled[key] == pytest.approx(base[key], rel=1e-6), key
    for fn in (gaussian_entropy, knn_entropy):
        raw = fn(c * z, normalize=False)
        assert raw == pytest.approx(fn(z, normalize=False) + 6 * math.log(c), rel=1e-9)
    assert twonn_dimension(c * z) == pytest.approx(twonn_dimension(z), rel=1e-6)
    assert mle_dimension(c * z) == pytest.approx(mle_dimension(z), rel=1e-6)


def test_knn_entropy_with_duplicates_is_finite_and_invariant() -> None:
    rng = np.random.default_rng(4)
    z = np.repeat(rng.normal(size=(300, 3)), 5, axis=0)  # every point 5 times, k = 3
    value, reason = latent._knn_entropy(z, 3, True, None, 0)
    assert np.isfinite(value) and "jitter" in reason
    # Near-atomic data: far below the entropy of the distinct points alone.
    assert value < knn_entropy(z[::5]) - 5.0
    assert knn_entropy(10.0 * z) == pytest.approx(value, rel=1e-6)


def test_latent_statistics_keys_and_invariance() -> None:
    z, _ = gaussian_sample(16, 3000, seed=5)
    stats = latent_statistics(z)
    assert set(stats) == STAT_KEYS | {"latent_statistics_reason"}
    assert stats["latent_statistics_reason"] is None
    assert all(isinstance(stats[k], float) and np.isfinite(stats[k]) for k in STAT_KEYS)
    scaled = latent_statistics(10.0 * z)
    for key in STAT_KEYS:
        assert scaled[key] == pytest.approx(stats[key], rel=1e-6), key
    # kNN and TwoNN run on a fixed 2,000-point subsample: same as calling them directly.
    assert stats["latent_entropy_knn"] == pytest.approx(knn_entropy(z, max_points=2000), rel=1e-12)
    assert stats["latent_intrinsic_dim"] == pytest.approx(
        twonn_dimension(z, max_points=2000), rel=1e-12
    )
    assert stats["latent_entropy_gaussian"] == pytest.approx(gaussian_entropy(z), rel=1e-12)


def test_torch_and_float32_input() -> None:
    z, _ = gaussian_sample(24, 800, seed=6)
    z32 = z.astype(np.float32)
    from_numpy = latent_statistics(z32)
    from_torch = latent_statistics(torch.from_numpy(z32).requires_grad_(True) * 1.0)
    for key in STAT_KEYS:
        assert from_torch[key] == pytest.approx(from_numpy[key], rel=1e-9), key
        assert from_numpy[key] == pytest.approx(latent_statistics(z)[key], rel=1e-4), key


@settings(max_examples=15, deadline=None)
@given(
    scale=st.floats(min_value=1e-3, max_value=1e3),
    seed=st.integers(min_value=0, max_value=10_000),
    d=st.integers(min_value=1, max_value=20),
)
def test_property_invariance_under_random_scales(scale: float, seed: int, d: int) -> None:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(200, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    for fn in (gaussian_entropy, knn_entropy, effective_rank, participation_ratio):
        a, b = fn(z), fn(scale * z)
        assert np.isfinite(a)
        assert b == pytest.approx(a, rel=1e-6, abs=1e-9), fn.__name__
    assert 1.0 - 1e-9 <= effective_rank(z) <= d + 1e-9
    assert 1.0 - 1e-9 <= participation_ratio(z) <= d + 1e-9


# --------------------------------------------------------------------- spectrum


@pytest.mark.parametrize("d", [1, 4, 16])
def test_spectrum_measures_of_isotropic_covariance(d: int) -> None:
    z = exact_spectrum_data([2.5] * d)
    assert effective_rank(z) == pytest.approx(d, rel=1e-9)
    assert participation_ratio(z) == pytest.approx(d, rel=1e-9)
    # A random isotropic Gaussian sample: close to d.
    g = np.random.default_rng(d).normal(size=(5000, d))
    assert effective_rank(g) == pytest.approx(d, rel=0.01)
    assert participation_ratio(g) == pytest.approx(d, rel=0.01)


@pytest.mark.parametrize(("r", "d"), [(1, 6), (3, 8), (5, 32)])
def test_spectrum_measures_of_rank_r_covariance(r: int, d: int) -> None:
    z = exact_spectrum_data([1.0] * r + [0.0] * (d - r))
    assert effective_rank(z) == pytest.approx(r, rel=1e-6)
    assert participation_ratio(z) == pytest.approx(r, rel=1e-6)


def test_spectrum_measures_of_unequal_eigenvalues() -> None:
    lam = np.array([4.0, 2.0, 1.0, 1.0, 0.5])
    z = exact_spectrum_data(list(lam))
    p = lam / lam.sum()
    assert effective_rank(z) == pytest.approx(math.exp(-np.sum(p * np.log(p))), rel=1e-9)
    assert participation_ratio(z) == pytest.approx(lam.sum() ** 2 / np.sum(lam**2), rel=1e-9)


# --------------------------------------------------------- intrinsic dimension


@pytest.mark.parametrize("k", [2, 5, 10])
def test_intrinsic_dimension_of_k_sphere_in_64_dims(k: int) -> None:
    x = sphere(k, 2000, seed=0)
    assert abs(twonn_dimension(x) - k) <= 1.0, twonn_dimension(x)
    assert abs(mle_dimension(x) - k) <= 1.0, mle_dimension(x)


@pytest.mark.parametrize("k", [2, 5])
def test_intrinsic_dimension_of_curved_cube_in_64_dims(k: int) -> None:
    # (A 10-cube is left out: at n = 2,000 most of its points lie near the boundary and
    # both estimators read about 8.)
    x = curved_cube(k, 2000, seed=1)
    assert abs(twonn_dimension(x) - k) <= 1.0, twonn_dimension(x)
    assert abs(mle_dimension(x) - k) <= 1.0, mle_dimension(x)


def test_intrinsic_dimension_ignores_duplicates() -> None:
    x = sphere(3, 1500, seed=2)
    doubled = np.concatenate([x, x[:700]])
    assert twonn_dimension(doubled) == pytest.approx(twonn_dimension(x), rel=1e-12)
    assert mle_dimension(doubled) == pytest.approx(mle_dimension(x), rel=1e-12)
    assert abs(twonn_dimension(x) - 3) <= 0.5
    # Rows equal up to the sign of a zero are duplicates too.
    x[:, 0] = 0.0
    signed = np.concatenate([x, np.concatenate([-x[:300, :1], x[:300, 1:]], axis=1)])
    assert np.signbit(signed[-1, 0])
    assert twonn_dimension(signed) == pytest.approx(twonn_dimension(x), rel=1e-12)


def test_image_intrinsic_dimension_of_low_dimensional_images() -> None:
    flat = sphere(3, 1500, seed=3, ambient=2 * 16 * 16)
    images = torch.from_numpy(flat.astype(np.float32)).reshape(-1, 2, 16, 16)
    out = image_intrinsic_dimension(images, max_points=1200, seed=0)
    assert set(out) == {"image_intrinsic_dim_twonn", "image_intrinsic_dim_mle"}
    assert abs(out["image_intrinsic_dim_twonn"] - 3) <= 1.0
    assert abs(out["image_intrinsic_dim_mle"] - 3) <= 1.0
    # float32 images (brute force in float32) agree with the float64 computation.
    out64 = image_intrinsic_dimension(images.double().numpy(), max_points=1200, seed=0)
    for key, value in out.items():
        assert value == pytest.approx(out64[key], rel=1e-4), key


@pytest.mark.parametrize("d", [3, 40])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nearest_distances_match_cdist(d: int, dtype: type) -> None:
    rng = np.random.default_rng(d)
    x = (100.0 + rng.normal(size=(300, d))).astype(dtype)
    x[10] = x[20]  # a duplicate, and a near-duplicate far from the origin
    x[30] = x[40] + np.asarray(1e-3, dtype=dtype)
    full = cdist(x.astype(np.float64), x.astype(np.float64))
    np.fill_diagonal(full, np.inf)
    expected = np.sort(full, axis=1)[:, :4]
    got = latent._nearest_distances(x, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)
    assert got[10, 0] == 0.0 and got[30, 0] > 0.0


# ------------------------------------------------------------- degenerate input


def _nan_or_finite(value: float) -> bool:
    return bool(np.isnan(value) or np.isfinite(value))


DEGENERATE = {
    "empty": np.zeros((0, 4)),
    "one point": np.ones((1, 4)),
    "two points": np.arange(8.0).reshape(2, 4),
    "constant": np.full((200, 5), 3.25),
    "nan": np.where(np.eye(50, 4) > 0, np.nan, 1.0) + np.arange(50.0)[:, None],
    "inf": np.where(np.eye(50, 4) > 0, np.inf, 1.0) + np.arange(50.0)[:, None],
}


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_degenerate_input_gives_nan_and_reason(case: str) -> None:
    z = DEGENERATE[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = latent_statistics(z)
        for key in STAT_KEYS:
            assert math.isnan(stats[key]), (case, key)
        assert isinstance(stats["latent_statistics_reason"], str)
        assert stats["latent_statistics_reason"]
        for fn in (
            gaussian_entropy,
            knn_entropy,
            effective_rank,
            participation_ratio,
            twonn_dimension,
            mle_dimension,
        ):
            assert math.isnan(fn(z)), (case, fn.__name__)
        images = image_intrinsic_dimension(z.reshape(z.shape[0], 1, 1, z.shape[1]))
        assert all(math.isnan(v) for v in images.values()), case


@pytest.mark.filterwarnings("error")
def test_fewer_points_than_dimensions() -> None:
    z = np.random.default_rng(7).normal(size=(20, 32))
    assert math.isnan(gaussian_entropy(z))
    assert math.isnan(knn_entropy(z))
    stats = latent_statistics(z)
    assert math.isnan(stats["latent_entropy_gaussian"])
    assert math.isnan(stats["latent_entropy_knn"])
    assert "n > d" in stats["latent_statistics_reason"]
    # The spectrum measures and TwoNN are still defined.
    assert 1.0 <= stats["latent_effective_rank"] <= 19.0 + 1e-9
    assert np.isfinite(stats["latent_intrinsic_dim"])


@pytest.mark.filterwarnings("error")
def test_rank_deficient_covariance() -> None:
    rng = np.random.default_rng(8)
    z = np.zeros((1000, 6))
    z[:, :3] = rng.normal(size=(1000, 3))
    z[:, 3] = z[:, 0] + z[:, 1]  # linearly dependent
    z[:, 5] = -1.5  # dead unit
    g = gaussian_entropy(z)
    assert np.isfinite(g)  # Ledoit-Wolf shrinkage keeps it finite
    assert math.isnan(knn_entropy(z))
    stats = latent_statistics(z)
    assert stats["latent_entropy_gaussian"] == pytest.approx(g, rel=1e-12)
    assert math.isnan(stats["latent_entropy_knn"])
    assert "rank 3" in stats["latent_statistics_reason"]
    assert stats["latent_effective_rank"] == pytest.approx(effective_rank(z[:, :4]), rel=1e-9)
    assert abs(stats["latent_intrinsic_dim"] - 3) <= 0.5


@pytest.mark.filterwarnings("error")
def test_float32_dependent_coordinate_counts_as_rank_deficient() -> None:
    rng = np.random.default_rng(9)
    z = rng.normal(size=(500, 3)).astype(np.float32)
    z = np.concatenate([z, (z[:, :1] * 0.3 + z[:, 1:2] * 0.7)], axis=1)
    assert math.isnan(knn_entropy(z))
    assert np.isfinite(knn_entropy(z[:, :3]))


@pytest.mark.filterwarnings("error")
def test_few_distinct_points() -> None:
    z = np.repeat(np.eye(2, 3), 50, axis=0)  # 2 distinct points
    assert math.isnan(twonn_dimension(z))
    assert math.isnan(mle_dimension(z))
    stats = latent_statistics(z)
    assert math.isnan(stats["latent_intrinsic_dim"])
    assert "distinct" in stats["latent_statistics_reason"]
    assert all(_nan_or_finite(stats[k]) for k in STAT_KEYS)


def test_wrong_arguments_raise() -> None:
    with pytest.raises(ValueError, match="2-D"):
        latent_statistics(np.zeros(10))
    with pytest.raises(ValueError, match="discard_fraction"):
        twonn_dimension(np.zeros((10, 2)), discard_fraction=1.0)
    with pytest.raises(ValueError, match="k must"):
        mle_dimension(np.zeros((10, 2)), k=1)
    with pytest.raises(ValueError, match="k must"):
        knn_entropy(np.zeros((10, 2)), k=0)
    with pytest.raises(ValueError, match="max_points"):
        latent_statistics(np.zeros((10, 2)), max_points=2)
    with pytest.raises(ValueError, match="images"):
        image_intrinsic_dimension(np.zeros(5))


# ------------------------------------------------------------------- predictors


@pytest.mark.parametrize(
    ("intrinsic_dim", "expected"),
    [(0.2, 1), (1.0, 1), (1.49, 1), (1.5, 2), (2.5, 4), (3.4, 4), (4.4, 4), (4.6, 8),
     (16.0, 16), (16.6, 32), (127.0, 128), (900.0, 128)],
)  # fmt: skip
def test_predict_latent_dim_from_intrinsic_dim(intrinsic_dim: float, expected: int) -> None:
    got = predict_latent_dim_from_intrinsic_dim(intrinsic_dim)
    assert got == expected and isinstance(got, int)


def test_predict_latent_dim_custom_candidates_and_errors() -> None:
    assert predict_latent_dim_from_intrinsic_dim(2.6, candidates=[32, 8, 3]) == 3
    assert predict_latent_dim_from_intrinsic_dim(3.6, candidates=[32, 8, 3]) == 8
    for bad in (float("nan"), -1.0, 0.0, "x"):
        with pytest.raises(ValueError, match="intrinsic_dim"):
            predict_latent_dim_from_intrinsic_dim(bad)
    with pytest.raises(ValueError, match="candidates"):
        predict_latent_dim_from_intrinsic_dim(3.0, candidates=[])
    with pytest.raises(ValueError, match="candidates"):
        predict_latent_dim_from_intrinsic_dim(3.0, candidates=[0, 4])


LATENT_DIMS = [1, 2, 4, 8, 16, 32, 64, 128]


def elbow_curve(knee: int) -> list[float]:
    """Error falling linearly in log2(latent_dim) down to ``knee``, then nearly flat."""
    j = int(math.log2(knee))
    return [1.0 - 0.9 * min(i, j) / j - 0.002 * max(0, i - j) for i in range(len(LATENT_DIMS))]


@pytest.mark.parametrize("knee", [4, 8, 16, 32])
def test_elbow_of_constructed_curve(knee: int) -> None:
    assert elbow_latent_dim(LATENT_DIMS, elbow_curve(knee)) == knee


def test_elbow_averages_seeds_and_accepts_any_order() -> None:
    rng = np.random.default_rng(0)
    clean = np.asarray(elbow_curve(8))
    seed_a = np.asarray(elbow_curve(4))  # one seed alone has its knee at 4
    noise = rng.normal(scale=0.02, size=clean.size)
    seeds = [seed_a + noise, clean + noise, 3 * clean - seed_a - 2 * noise]  # mean = clean
    assert elbow_latent_dim(LATENT_DIMS, list(seeds[0])) == 4
    dims = LATENT_DIMS * 3
    errs = [float(e) for curve in seeds for e in curve]
    order = rng.permutation(len(dims))
    got = elbow_latent_dim([dims[i] for i in order], [errs[i] for i in order])
    assert got == 8
    # A diverged seed (NaN error) is ignored.
    assert elbow_latent_dim(dims + [2], errs + [float("nan")]) == 8


def test_elbow_uses_the_curve_up_to_its_minimum() -> None:
    errors = [1.0, 0.55, 0.1, 0.09, 0.2, 0.5, 0.9, 1.2]  # overfits past 8
    assert elbow_latent_dim(LATENT_DIMS, errors) == 4


def test_elbow_of_flat_and_straight_curves() -> None:
    flat = [0.500, 0.499, 0.498, 0.497, 0.496, 0.495, 0.494, 0.493]
    assert elbow_latent_dim(LATENT_DIMS, flat) == 1
    straight = [1.0 - 0.1 * i for i in range(8)]  # no knee: needs the largest
    assert elbow_latent_dim(LATENT_DIMS, straight) == 128
    assert elbow_latent_dim([4, 4], [0.1, 0.2]) == 4
    # Flat within 5 % after 16, but with no clear knee: the smallest within 5 %.
    gentle = [1.0, 0.9, 0.8, 0.7, 0.6, 0.59, 0.585, 0.58]
    assert elbow_latent_dim(LATENT_DIMS, gentle, min_sag=0.5) == 16


def test_elbow_errors() -> None:
    with pytest.raises(ValueError, match="same length"):
        elbow_latent_dim([1, 2], [0.1])
    with pytest.raises(ValueError, match="latent_dims"):
        elbow_latent_dim([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        elbow_latent_dim([1, 2], [float("nan")] * 2)


# -------------------------------------------------------------------- docstrings


def test_docstring_examples_run() -> None:
    result = doctest.testmod(latent, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 20
    assert result.failed == 0
