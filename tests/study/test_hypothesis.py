"""The hypothesis statistics on constructed trials tables with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from study import hypothesis as H

DIMS = (1, 2, 4, 8, 16, 32, 64, 128)


def _table(auc_fn, entropy_fn=None, seeds=(0, 1, 2), dims=DIMS, noise=0.005, rng_seed=0):
    """One stratum: a row per (latent_dim, seed) with auc = auc_fn(d) + noise."""
    rng = np.random.default_rng(rng_seed)
    entropy_fn = entropy_fn or (lambda d: 2.0 * math.log2(d))
    rows = []
    for d in dims:
        for s in seeds:
            rows.append(
                dict(
                    study="t",
                    dataset="toy",
                    model="ae",
                    stratum="toy/ae",
                    latent_dim=d,
                    seed=s,
                    status="completed",
                    auc=auc_fn(d) + noise * rng.standard_normal(),
                    latent_entropy_gaussian=entropy_fn(d) + 0.05 * rng.standard_normal(),
                    latent_entropy_knn=entropy_fn(d) + 0.05 * rng.standard_normal(),
                    recon_error_val_normal=0.02 + 0.1 * max(0.0, 2 - math.log2(d)),
                    recon_error_test_normal=0.03 + 0.1 * max(0.0, 2 - math.log2(d)),
                    image_intrinsic_dim_twonn=5.3,
                )
            )
    return pd.DataFrame(rows)


def _inverted_u(d, peak=8):
    return 0.9 - 0.04 * (math.log2(d) - math.log2(peak)) ** 2


FAST = dict(n_boot=500, n_perm=500)


def test_monotone_decreasing_auc_supports_the_hypothesis():
    df = _table(lambda d: 0.95 - 0.04 * math.log2(d))
    (v,) = H.verdicts(df, **FAST)
    assert v.best_latent_dim == 1
    assert v.over.verdict == H.SUPPORTED
    assert v.over.rho < 0 and v.over.ci_high < 0
    assert v.over.n == len(df) and v.over.n_latent_dims == len(DIMS)
    assert v.over.p_value < 0.01
    # the under-capacity branch holds only d = 1: too few latent dims
    assert v.under.verdict == H.INCONCLUSIVE
    assert "too few" in v.under.reason
    assert v.verdict == H.SUPPORTED
    assert "SUPPORTED" in v.summary() and f"n = {len(df)}" in v.summary()


def test_inverted_u_supported_on_both_branches_with_opposite_signs():
    df = _table(_inverted_u)
    (v,) = H.verdicts(df, **FAST)
    assert v.best_latent_dim == 8
    assert v.best_ci_low <= 8 <= v.best_ci_high
    assert 0.5 < v.best_agreement <= 1.0
    assert v.over.verdict == H.SUPPORTED and v.over.rho < 0
    assert v.over.latent_dims == (8, 16, 32, 64, 128) and v.over.n == 15
    assert v.under.verdict == H.SUPPORTED and v.under.rho > 0
    assert v.under.latent_dims == (1, 2, 4, 8) and v.under.n == 12
    # the global correlation mixes the branches and says so
    assert v.overall.branch == "global" and "mixes" in v.overall.reason
    assert abs(v.overall.rho) < abs(v.over.rho)


def test_entropy_falling_with_latent_dim_contradicts_on_the_over_capacity_branch():
    df = _table(lambda d: 0.95 - 0.04 * math.log2(d), entropy_fn=lambda d: -math.log2(d))
    (v,) = H.verdicts(df, **FAST)
    assert v.over.verdict == H.CONTRADICTED
    assert v.over.rho > 0 and v.over.ci_low > 0
    assert "against" in v.over.reason


def test_random_auc_is_inconclusive():
    outcomes = []
    for s in range(8):
        rng = np.random.default_rng(100 + s)
        df = _table(lambda d: 0.0, noise=0.0, rng_seed=s)
        df["auc"] = rng.uniform(0.4, 0.6, len(df))
        (v,) = H.verdicts(df, **FAST, seed=s)
        outcomes.append(v.overall.verdict)
    # a calibrated 95 % interval excludes 0 only rarely when AUC is noise
    assert outcomes.count(H.INCONCLUSIVE) >= 7, outcomes


def test_one_seed_only_gives_no_interval_and_says_so():
    df = _table(_inverted_u, seeds=(0,))
    (v,) = H.verdicts(df, **FAST)
    assert v.best_latent_dim == 8
    assert v.best_ci_low is None and v.best_ci_high is None
    assert math.isnan(v.best_agreement)
    assert "one seed only" in v.best_reason
    assert "one seed only" in v.best_text()
    assert v.n_seeds == 1


def test_too_few_trials_is_inconclusive_with_reason():
    df = _table(_inverted_u, seeds=(0,), dims=(4, 8, 16))
    (v,) = H.verdicts(df, **FAST)
    for b in (v.over, v.under, v.overall):
        assert b.verdict == H.INCONCLUSIVE
        assert "too few trials" in b.reason
        assert math.isnan(b.rho)
        assert f"n = {b.n}" in b.describe()
    assert v.overall.n == 3


def test_one_latent_dim_is_inconclusive():
    df = _table(_inverted_u, seeds=(0, 1, 2, 3, 4), dims=(8,))
    (v,) = H.verdicts(df, **FAST)
    assert v.overall.verdict == H.INCONCLUSIVE
    assert "1 latent dims" in v.overall.reason
    assert "only one latent_dim" in v.best_reason


def test_only_completed_trials_count():
    df = _table(_inverted_u)
    bad = df.iloc[:5].copy()
    bad["status"] = ["errored", "diverged", "early-stopped", "errored", "running"]
    bad["auc"] = 0.99  # would move the best latent_dim to 1 if counted
    (v,) = H.verdicts(pd.concat([df, bad], ignore_index=True), **FAST)
    assert v.best_latent_dim == 8
    assert v.n_trials == len(df)


def test_numbers_are_reproducible_and_seed_dependent():
    df = _table(_inverted_u)
    a = H.verdicts_table(H.verdicts(df, **FAST))
    b = H.verdicts_table(H.verdicts(df, **FAST))
    pd.testing.assert_frame_equal(a, b)
    c = H.verdicts_table(H.verdicts(df, **FAST, seed=7))
    assert not np.allclose(a["ci_low"].to_numpy(float), c["ci_low"].to_numpy(float))


def test_spearman_matches_scipy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    y = 0.5 * x + rng.normal(size=40)
    rho, lo, hi, p = H.spearman_test(x, y, n_boot=400, n_perm=400)
    assert rho == pytest.approx(stats.spearmanr(x, y).statistic)
    assert lo < rho < hi
    assert 0 < p < 0.05
    assert all(math.isnan(v) for v in H.spearman_test(np.ones(5), np.arange(5.0)))


def test_selectable_entropy_column_and_missing_column():
    df = _table(_inverted_u)
    (v,) = H.verdicts(df, entropy_col="latent_entropy_knn", **FAST)
    assert v.entropy_col == "latent_entropy_knn" and v.over.verdict == H.SUPPORTED
    (w,) = H.verdicts(df, entropy_col="latent_effective_rank", **FAST)
    assert w.over.verdict == H.INCONCLUSIVE and "not in the trials table" in w.over.reason
    with pytest.raises(ValueError, match="'latent_dim'"):
        H.verdicts(df.drop(columns=["latent_dim"]))


def test_label_free_predictions_beside_the_observed_best():
    df = _table(_inverted_u)
    (v,) = H.verdicts(df, **FAST)
    idp, elbow = v.predictions
    assert idp.predicted == 8 and idp.source_value == pytest.approx(5.3)
    assert idp.ratio == pytest.approx(8 / v.best_latent_dim)
    assert elbow.predicted == 4 and "recon_error_val_normal" in elbow.reason
    assert elbow.ratio == pytest.approx(0.5)
    # without validation errors the test-normal curve is used
    (w,) = H.verdicts(df.drop(columns=["recon_error_val_normal"]), **FAST)
    assert "recon_error_test_normal" in w.predictions[1].reason
    # without the columns: no prediction, and a reason
    (u,) = H.verdicts(
        df.drop(
            columns=[
                "recon_error_val_normal",
                "recon_error_test_normal",
                "image_intrinsic_dim_twonn",
            ]
        ),
        **FAST,
    )
    assert all(p.predicted is None and p.reason for p in u.predictions)
    assert math.isnan(u.predictions[0].ratio)


def test_prediction_rules():
    assert H.predict_from_intrinsic_dim(5.3) == 8
    assert H.predict_from_intrinsic_dim(5.3, candidates=(4, 16, 64)) == 16
    assert H.predict_from_intrinsic_dim(float("nan")) is None
    assert H.elbow_from_errors([1, 2, 4, 8, 16], [1.0, 0.2, 0.15, 0.12, 0.1]) == 2
    assert H.elbow_from_errors([1, 2, 4], [float("nan")] * 3) is None


def test_several_strata_in_order():
    a = _table(_inverted_u)
    b = _table(lambda d: 0.95 - 0.04 * math.log2(d))
    b["dataset"], b["stratum"] = "other", "other/ae"
    out = H.verdicts(pd.concat([a, b], ignore_index=True), **FAST)
    assert [v.stratum for v in out] == ["toy/ae", "other/ae"]
    assert [v.best_latent_dim for v in out] == [8, 1]
    table = H.verdicts_table(out)
    assert len(table) == 6 and set(table["branch"]) == {"over-capacity", "under-capacity", "global"}


def test_resampled_ranks_match_scipy_with_ties():
    rng = np.random.default_rng(5)
    x = np.round(rng.random(25), 1)  # many ties
    idx = rng.integers(0, 25, size=(200, 25))
    np.testing.assert_allclose(H._resampled_ranks(x, idx), stats.rankdata(x[idx], axis=1))
