"""The hypothesis statistics on constructed trials tables with known answers.

Calibration (false-positive rate and power) is measured in test_calibration.py."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from study import hypothesis as H
from study import stats as S

DIMS = (1, 2, 4, 8, 16, 32, 64, 128)
FAST = dict(n_sim=3000, n_boot=300)


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
                    trial_id=f"d{d}-s{s}",
                    dataset="toy",
                    model="ae",
                    stratum="toy/ae",
                    latent_dim=d,
                    seed=s,
                    status="completed",
                    auc=auc_fn(d) + noise * rng.standard_normal(),
                    latent_entropy_gaussian=entropy_fn(d) + 0.05 * rng.standard_normal(),
                    recon_error_val_normal=0.02 + 0.1 * max(0.0, 2 - math.log2(d)),
                    recon_error_test_normal=0.03 + 0.1 * max(0.0, 2 - math.log2(d)),
                    image_intrinsic_dim_twonn=5.3,
                )
            )
    return pd.DataFrame(rows)


def _inverted_u(d, peak=8):
    return 0.9 - 0.04 * (math.log2(d) - math.log2(peak)) ** 2


def test_inverted_u_is_supported_on_both_branches():
    (v,) = H.verdicts(_table(_inverted_u), **FAST)
    assert v.best_latent_dim == 8
    assert v.verdict == H.SUPPORTED and v.over.verdict == H.SUPPORTED
    assert v.under.verdict == H.SUPPORTED
    assert v.over.reference_dim == 128 and v.under.reference_dim == 1
    assert v.p_value < 0.01 and v.p_value == v.over.p_adjusted
    # effect: AUC at 8 minus AUC at 128 (0.9 - (0.9 - 0.04 * 16) = 0.64), with its interval
    assert v.effect == pytest.approx(0.64, abs=0.02)
    assert v.effect_ci[0] < v.effect < v.effect_ci[1] and v.effect_ci[0] > 0.5
    assert 8 in v.best_set and 1 not in v.best_set and 128 not in v.best_set
    assert v.uncertainty.level == "seeds" and "seeds only" in v.uncertainty.note
    assert "supported" in v.headline() and "max-t" in v.headline()
    # descriptions, not verdicts: entropy rises with d, AUC falls over capacity
    assert v.over_rho.rho < 0 and v.under_rho.rho > 0
    assert not hasattr(v.over_rho, "verdict")


def test_monotone_falling_auc_supports_over_capacity_only():
    (v,) = H.verdicts(_table(lambda d: 0.95 - 0.04 * math.log2(d)), **FAST)
    assert v.best_latent_dim == 1 and v.verdict == H.SUPPORTED
    assert v.under.verdict == H.NOT_SHOWN and "smallest latent_dim" in v.under.reason


def test_auc_that_keeps_rising_contradicts():
    (v,) = H.verdicts(_table(lambda d: 0.6 + 0.04 * math.log2(d)), **FAST)
    assert v.best_latent_dim == 128
    assert v.verdict == H.CONTRADICTED and "keeps rising" in v.over.reason
    assert v.over.p_rising < 0.01


def test_flat_curve_is_not_shown():
    words = []
    for s in range(10):
        (v,) = H.verdicts(_table(lambda d: 0.7, noise=0.01, rng_seed=s), **FAST, seed=s)
        words.append(v.verdict)
    assert words.count(H.NOT_SHOWN) >= 9, words
    assert H.CONTRADICTED not in words


def test_one_seed_without_scores_is_not_tested_and_says_why():
    (v,) = H.verdicts(_table(_inverted_u, seeds=(0,)), **FAST)
    assert v.best_latent_dim == 8
    assert v.verdict == H.NOT_TESTED and "one seed" in v.over.reason
    assert math.isnan(v.p_value) and v.best_set == ()
    assert "not tested" in v.headline()


def test_one_latent_dim_is_not_tested():
    (v,) = H.verdicts(_table(_inverted_u, dims=(8,)), **FAST)
    assert v.verdict == H.NOT_TESTED and "only one latent_dim" in v.over.reason
    # also when a regulariser varies at that latent_dim (entropy.yaml)
    df = _table(_inverted_u, dims=(64,)).assign(kl_weight=[1e-4, 1e-3, 1e-2])
    (w,) = H.verdicts(df, **FAST)
    assert w.over.reason == "only one latent_dim" and w.subset == ""


def test_only_completed_trials_count_and_empty_strata_say_why():
    df = _table(_inverted_u)
    bad = df.iloc[:5].copy()
    bad["status"] = ["errored", "diverged", "early-stopped", "errored", "running"]
    bad["auc"] = 0.99  # would move the best latent_dim to 1 if counted
    stopped = df.iloc[:12].copy()
    stopped["dataset"], stopped["stratum"] = "hard", "hard/ae"
    stopped["status"], stopped["epochs_done"] = "early-stopped", 5
    out = H.verdicts(pd.concat([df, bad, stopped], ignore_index=True), **FAST)
    assert [v.stratum for v in out] == ["toy/ae", "hard/ae"]
    assert out[0].best_latent_dim == 8 and out[0].n_trials == len(df)
    assert out[1].verdict == H.NOT_TESTED
    assert out[1].over.reason == "no completed trial: 12 early-stopped at epoch 5"


def test_latent_dim_searched_with_other_parameters():
    df = _table(_inverted_u)
    # two lr values, crossed with everything: the larger like-for-like subset is tested
    df2 = df.copy()
    df2["trial_id"] = df2["trial_id"] + "-b"
    df2["auc"] -= 0.2
    both = pd.concat([df.assign(lr=1e-3), df2.assign(lr=1e-2).iloc[:-3]], ignore_index=True)
    (v,) = H.verdicts(both, **FAST)
    assert "lr = 0.001" in v.subset and f"({len(df)} of {len(both)} trials)" in v.subset
    assert v.verdict == H.SUPPORTED and v.n_trials == len(df)
    # every trial its own lr (an Optuna search): no like-for-like subset
    searched = df.assign(lr=np.linspace(1e-4, 1e-2, len(df)))
    (w,) = H.verdicts(searched, **FAST)
    assert w.verdict == H.NOT_TESTED and "grid over latent_dim" in w.over.reason


def test_holm_adjustment_across_strata():
    a = _table(_inverted_u)
    b = _table(lambda d: 0.7 + 0.004 * (d == 8), noise=0.01, rng_seed=3)
    b["dataset"], b["stratum"] = "other", "other/ae"
    both = pd.concat([a, b], ignore_index=True)
    raw = H.verdicts(both, adjust=None, **FAST)
    adj = H.verdicts(both, **FAST)
    assert raw[1].p_value == raw[1].over.p_value
    assert adj[1].p_value == pytest.approx(S.holm([raw[0].over.p_value, raw[1].over.p_value])[1])
    assert adj[1].p_value >= raw[1].p_value
    assert S.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    with pytest.raises(ValueError, match="alpha"):
        H.verdicts(a, alpha=1.5)


def test_numbers_are_reproducible_and_seed_dependent():
    df = _table(lambda d: 0.7 + 0.01 * (d == 8), noise=0.01)
    a = H.verdicts_table(H.verdicts(df, **FAST))
    b = H.verdicts_table(H.verdicts(df, **FAST))
    pd.testing.assert_frame_equal(a, b)
    c = H.verdicts_table(H.verdicts(df, **FAST, seed=7))
    assert not np.allclose(a["p_value"].to_numpy(float), c["p_value"].to_numpy(float))


def test_missing_columns():
    df = _table(_inverted_u)
    with pytest.raises(ValueError, match="'latent_dim'"):
        H.verdicts(df.drop(columns=["latent_dim"]))
    (v,) = H.verdicts(df.drop(columns=["latent_entropy_gaussian"]), **FAST)
    assert v.verdict == H.SUPPORTED  # the headline test does not need entropy
    assert math.isnan(v.over_rho.rho) and v.over_rho.reason


def test_spearman_matches_scipy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    y = 0.5 * x + rng.normal(size=40)
    rho, lo, hi = S.spearman_ci(x, y, n_boot=400)
    assert rho == pytest.approx(stats.spearmanr(x, y).statistic)
    assert lo < rho < hi
    assert all(math.isnan(v) for v in S.spearman_ci(np.ones(5), np.arange(5.0)))


def test_resampled_ranks_match_scipy_with_ties():
    rng = np.random.default_rng(5)
    x = np.round(rng.random(25), 1)  # many ties
    idx = rng.integers(0, 25, size=(200, 25))
    np.testing.assert_allclose(S._resampled_ranks(x, idx), stats.rankdata(x[idx], axis=1))


# ------------------------------------------------------------------ test-set uncertainty


def _scores_for(df: pd.DataFrame, n_normal=60, n_abnormal=40, seed=0) -> pd.DataFrame:
    """Per-image scores whose AUC per trial is about the trial's auc: abnormal images get
    a shift that grows with the trial's AUC; all trials share the images."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n_normal), np.ones(n_abnormal)].astype(int)
    base = rng.normal(size=len(labels))  # image difficulty, shared by all trials
    rows = []
    for _, t in df.iterrows():
        shift = math.sqrt(2) * stats.norm.ppf(min(max(t["auc"], 0.51), 0.99))
        s = base + labels * shift + 0.3 * rng.normal(size=len(labels))
        rows.append(
            pd.DataFrame(
                dict(trial_id=t["trial_id"], index=np.arange(len(labels)), score=s, label=labels)
            )
        )
    return pd.concat(rows, ignore_index=True)


def test_delong_components_give_the_auc_and_its_variance():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(80), np.ones(50)].astype(int)
    difficulty = rng.normal(size=130)  # shared by the three "models": correlated AUCs
    scores = difficulty + 0.7 * rng.normal(size=(3, 130)) + labels * np.array([[0.5], [1], [2]])
    v10, v01 = S.delong_components(scores, labels)
    for i in range(3):
        assert v10[i].mean() == pytest.approx(roc_auc_score(labels, scores[i]))
        assert v01[i].mean() == pytest.approx(roc_auc_score(labels, scores[i]))
    cov = S.mean_auc_covariance(scores, labels, [[0], [1], [2]])
    # against a bootstrap over images (stratified by label), AUCs by the rank formula
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    idx = np.hstack([rng.choice(neg, (2000, len(neg))), rng.choice(pos, (2000, len(pos)))])
    ranks = stats.rankdata(scores[:, idx], axis=2)[:, :, len(neg) :]
    m, n = len(pos), len(neg)
    boot = (ranks.sum(axis=2) - m * (m + 1) / 2) / (m * n)
    np.testing.assert_allclose(cov, np.cov(boot), rtol=0.25, atol=1e-4)


def test_two_level_uncertainty_with_per_image_scores():
    df = _table(_inverted_u, seeds=(0, 1), noise=0.01)
    scores = _scores_for(df)
    (seeds_only,) = H.verdicts(df, **FAST)
    (both,) = H.verdicts(df, scores, **FAST)
    assert both.uncertainty.level == "seeds and test images"
    assert both.uncertainty.n_test_images == 100 and "DeLong" in both.uncertainty.note
    width = lambda v: v.effect_ci[1] - v.effect_ci[0]  # noqa: E731
    assert width(both) > width(seeds_only)
    # one seed: the test-set level alone still gives a test
    one = df[df["seed"] == 0]
    (v,) = H.verdicts(one, scores, **FAST)
    assert v.verdict != H.NOT_TESTED and v.uncertainty.df == 0
    # scores from another test set are refused with the reason
    other = scores.assign(label=1 - scores["label"])
    (w,) = H.verdicts(df, pd.concat([scores, other.assign(index=other["index"])]), **FAST)
    assert w.uncertainty.level == "seeds" and "labels differ" in w.uncertainty.note


# ---------------------------------------------------------------- label-free predictions


def test_label_free_predictions_use_no_test_data():
    (v,) = H.verdicts(_table(_inverted_u), **FAST)
    idp, elbow = v.predictions
    assert idp.predicted == 8 and idp.source_value == pytest.approx(5.3)
    assert idp.inside is True and idp.auc_lost == pytest.approx(0.0)
    assert elbow.predicted == 4 and "recon_error_val_normal" in elbow.reason
    assert elbow.ratio == pytest.approx(0.5)
    assert elbow.auc_lost == pytest.approx(0.04, abs=0.01)
    # without a validation split the elbow is not available: test errors are never read
    (w,) = H.verdicts(_table(_inverted_u).drop(columns=["recon_error_val_normal"]), **FAST)
    assert w.predictions[1].predicted is None
    assert "not available" in w.predictions[1].reason


def test_prediction_rules():
    assert H.predict_from_intrinsic_dim(5.3) == 8
    assert H.predict_from_intrinsic_dim(5.3, candidates=(4, 16, 64)) == 16
    assert H.predict_from_intrinsic_dim(float("nan")) is None
    assert H.elbow_from_errors([1, 2, 4, 8, 16], [1.0, 0.2, 0.15, 0.12, 0.1]) == 2


# ------------------------------------------------------------------ entropy at fixed d


def _fixed(slope, n=24, dims=(64,), seed=0):
    rng = np.random.default_rng(seed)
    h = rng.uniform(0, 4, size=n)
    return pd.DataFrame(
        dict(
            dataset="toy",
            model="vae",
            latent_dim=np.resize(np.array(dims), n),
            seed=np.arange(n),
            status="completed",
            latent_entropy_gaussian=h,
            auc=0.8 + slope * h + 0.005 * rng.normal(size=n),
        )
    )


def test_entropy_at_fixed_latent_dim():
    (t,) = H.fixed_latent_dim_tests(_fixed(-0.02), n_perm=2000)
    assert t.verdict == H.SUPPORTED and t.rho < -0.8 and t.p_value < 0.01
    assert t.groups == {64: 24} and "lower entropy" in t.reason
    (u,) = H.fixed_latent_dim_tests(_fixed(0.02, dims=(32, 64)), n_perm=2000)
    assert u.verdict == H.CONTRADICTED and u.groups == {32: 12, 64: 12}
    (w,) = H.fixed_latent_dim_tests(_fixed(-0.02, n=3), n_perm=200)
    assert w.verdict == H.NOT_TESTED and "too few" in w.reason
    # entropy that only moves with latent_dim (one trial per latent_dim): nothing to test
    (x,) = H.fixed_latent_dim_tests(_table(_inverted_u, seeds=(0,)), n_perm=200)
    assert x.verdict == H.NOT_TESTED


def test_fixed_latent_dim_permutes_within_groups_only():
    # entropy and AUC both shift with latent_dim but are unrelated within it: pooled
    # across groups they correlate; within groups they do not
    rng = np.random.default_rng(2)
    df = _fixed(0.0, n=40, dims=(16, 64), seed=2)
    shift = (df["latent_dim"] == 64).to_numpy()
    df["latent_entropy_gaussian"] += 10 * shift
    df["auc"] = 0.7 + 0.1 * shift + 0.005 * rng.normal(size=len(df))
    (t,) = H.fixed_latent_dim_tests(df, n_perm=2000)
    assert stats.spearmanr(df["latent_entropy_gaussian"], df["auc"]).statistic > 0.7
    assert t.verdict == H.NOT_SHOWN and abs(t.rho) < 0.4
