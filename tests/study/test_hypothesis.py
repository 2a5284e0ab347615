"""The hypothesis statistics on constructed trials tables with known answers.

Calibration (false-positive rate and power) is measured in test_calibration.py."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats
from sklearn.metrics import roc_auc_score

from study import hypothesis as H
from study import stats as S
from study.hypothesis.images import image_level

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
    assert v.headline().startswith("toy/ae: supported: inverted U") and "d* = 8" in v.headline()
    assert "max-t" in v.over.describe() and v.p_value == max(v.over.p_adjusted, v.under.p_adjusted)
    # descriptions, not verdicts: entropy rises with d, AUC falls over capacity
    assert v.over_rho.rho < 0 and v.under_rho.rho > 0
    assert not hasattr(v.over_rho, "verdict")


def test_monotone_falling_auc_shows_the_over_capacity_drop_only():
    # the paper's hypothesis is an inverted U: a monotone curve is not its headline
    (v,) = H.verdicts(_table(lambda d: 0.95 - 0.04 * math.log2(d)), **FAST)
    assert v.best_latent_dim == 1 and v.over.verdict == H.SUPPORTED
    assert v.verdict == H.OVER_ONLY == "over-capacity drop only"
    assert v.under.verdict == H.NOT_SHOWN and "smallest latent_dim" in v.under.reason
    # and the mirror: rising then flat shows the under-capacity drop only
    (w,) = H.verdicts(_table(lambda d: 0.6 + 0.1 * (d >= 8), noise=0.005), **FAST)
    assert w.under.verdict == H.SUPPORTED and w.over.verdict == H.NOT_SHOWN
    assert w.verdict == H.UNDER_ONLY


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
    assert raw[1].over.p_adjusted == raw[1].over.p_value
    expected = S.holm([raw[0].over.p_value, raw[1].over.p_value])[1]
    assert adj[1].over.p_adjusted == pytest.approx(expected)
    assert adj[1].p_value == max(adj[1].over.p_adjusted, adj[1].under.p_adjusted)
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
    assert "less the model x image interaction" in both.uncertainty.note
    # one seed: the test images alone can only speak of these trained models, so no
    # verdict word, no d*; the conditional result is in the reason
    one = df[df["seed"] == 0]
    (v,) = H.verdicts(one, scores, **FAST)
    assert v.verdict == H.NOT_TESTED and v.uncertainty.df == 0
    assert "conditional on these trained models" in v.over.reason
    assert "1 seed: training noise unmeasured" in v.over.reason
    assert "conditional" in v.uncertainty.note and v.best_set == ()
    assert v.best_text().startswith("no best latent_dim") and "d* =" not in v.headline()
    row = H.verdicts_table([v]).iloc[0]
    assert row["branch"] == "inverted U" and pd.isna(row["best_latent_dim"])
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


def _knob_table(auc_by_level, *, model="vae", knob="kl_weight", values=(1e-4, 1e-3, 1e-2, 3e-2),
                entropy_slope=-1.0, seeds=3, plain_auc=None, seed=0, **extra):  # fmt: skip
    """One data set, one model at latent_dim 64: AUC per knob level (+ noise 0.005),
    entropy moving by ``entropy_slope`` per level; a plain AE of the same architecture
    as level 0 when ``plain_auc`` is given."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, (v, a) in enumerate(zip(values, auc_by_level)):
        for s in range(seeds):
            rows.append({"dataset": "toy", "model": model, "latent_dim": 64, "seed": s,
                         knob: v, "status": "completed", "hidden_dim": 256,
                         "auc": a + 0.005 * rng.normal(),
                         "latent_entropy_gaussian": 10 + entropy_slope * (i + 1)
                         + 0.1 * rng.normal(), **extra})  # fmt: skip
    if plain_auc is not None:
        for s in range(seeds):
            rows.append({"dataset": "toy", "model": "ae", "latent_dim": 64, "seed": s,
                         "status": "completed", "hidden_dim": 256,
                         "auc": plain_auc + 0.005 * rng.normal(),
                         "latent_entropy_gaussian": 10 + 0.1 * rng.normal()})  # fmt: skip
    return pd.DataFrame(rows)


def test_entropy_knob_per_model_with_the_plain_ae_as_level_zero():
    df = _knob_table([0.82, 0.85, 0.84, 0.74], plain_auc=0.80)
    (t,) = H.fixed_latent_dim_tests(df, n_perm=2000)
    assert (t.dataset, t.model, t.latent_dim, t.knob) == ("toy", "vae", 64, "kl_weight")
    assert t.levels[0] == "ae (level 0)" and t.levels[1] == "kl_weight = 0.0001"
    assert t.counts == (3, 3, 3, 3, 3) and t.manipulation_rho < -0.8
    assert t.manipulation_p < 0.01
    assert t.verdict == H.SUPPORTED and t.best_level == "kl_weight = 0.001"
    assert t.effect == pytest.approx(0.05, abs=0.015) and t.effect_ci[0] > 0
    # the collapse at the strongest level is the expected under-capacity side
    assert "collapses at the strongest level" in t.reason and "not evidence against" in t.reason
    assert "vae, latent_dim 64: supported" in t.describe()


def test_entropy_knob_words():
    # the least regularised level beats every other: contradicted (intersection-union)
    (c,) = H.fixed_latent_dim_tests(_knob_table([0.90, 0.84, 0.80, 0.76]), n_perm=2000)
    assert c.verdict == H.CONTRADICTED and c.p_weakest_best < 0.05
    # flat then a collapse at the strongest level only: not contradicted
    (f,) = H.fixed_latent_dim_tests(_knob_table([0.85, 0.85, 0.85, 0.70]), n_perm=2000)
    assert f.verdict == H.NOT_SHOWN and "collapses at the strongest" in f.reason
    # the knob did not lower entropy: the manipulation check refuses
    flat_h = _knob_table([0.80, 0.85, 0.85, 0.85], entropy_slope=0.0)
    (m,) = H.fixed_latent_dim_tests(flat_h, n_perm=2000)
    assert m.verdict == H.NOT_TESTED and "did not lower entropy" in m.reason
    # one trial per level: no replicate
    (o,) = H.fixed_latent_dim_tests(_knob_table([0.8, 0.85, 0.85, 0.85], seeds=1), n_perm=200)
    assert o.verdict == H.NOT_TESTED and "fewer than 2 trials" in o.reason
    # MemAE's memory regularises more when smaller: levels run from large to small
    mem = _knob_table([0.8, 0.85, 0.85, 0.85], model="memae", knob="mem_size",
                      values=(100, 50, 25, 10))  # fmt: skip
    (r,) = H.fixed_latent_dim_tests(mem, n_perm=2000)
    assert r.levels[0] == "mem_size = 100" and r.levels[-1] == "mem_size = 10"
    # a plain AE alone (nothing varies but the seed) is a level, not a test
    assert H.fixed_latent_dim_tests(_table(_inverted_u, dims=(64,)), n_perm=200) == []


def test_entropy_models_are_never_pooled():
    # the VAE has lower entropy and lower AUC than the constrained AE, and within each
    # model AUC does not depend on the knob: neither model says anything
    vae = _knob_table([0.80] * 4, seed=1)
    cae = _knob_table([0.83] * 3, model="constrained_ae", knob="constraint_weight",
                      values=(0.01, 1.0, 10.0), seed=2)  # fmt: skip
    cae["latent_entropy_gaussian"] += 5
    out = H.fixed_latent_dim_tests(pd.concat([vae, cae], ignore_index=True), n_perm=2000)
    assert [t.model for t in out] == ["vae", "constrained_ae"]
    assert all(t.verdict == H.NOT_SHOWN for t in out), [t.reason for t in out]
    table = H.verdicts_table([], out, alpha=0.05)
    assert list(table["branch"]) == ["fixed latent_dim"] * 2
    assert list(table["knob"]) == ["kl_weight", "constraint_weight"]


# ------------------------------------------------------------------ variance model


def test_moderation_pools_equal_variances_and_keeps_unequal_ones():
    rng = np.random.default_rng(0)
    equal = rng.chisquare(4, size=(2000, 8)) / 4
    post, d0 = S.moderate(equal, np.full(8, 4))
    assert np.mean(np.isinf(d0)) > 0.4  # no spread beyond chance: one common value
    assert np.mean(post) == pytest.approx(1.0, abs=0.1)
    sigma2 = np.geomspace(0.1, 10, 8)
    spread = sigma2 * rng.chisquare(20, size=(2000, 8)) / 20
    post, d0 = S.moderate(spread, np.full(8, 20))
    assert np.median(d0) < 100
    assert np.all(np.diff(np.median(post, axis=0)) > 0)  # the order survives moderation
    assert S.trigamma_inverse(np.array([special.polygamma(1, 0.7)]))[0] == pytest.approx(0.7, 1e-4)


def test_test_image_interaction_is_taken_out_of_the_seed_variance():
    # no training noise: the seed variance measured on one test set is the model x image
    # interaction alone, which the image level estimates
    rng = np.random.default_rng(4)
    labels = np.r_[np.zeros(150), np.ones(150)].astype(bool)
    image = rng.normal(size=300)
    draws = []
    for _ in range(200):
        scores = image + labels + 0.5 * rng.normal(size=(4, 300))
        v10, _ = S.delong_components(scores, labels)
        lv = image_level(scores, labels, [4])
        draws.append((np.var(v10.mean(axis=1), ddof=1), lv.interaction[0]))
    s2, inter = np.array(draws).T
    assert np.mean(inter) == pytest.approx(np.mean(s2), rel=0.2)


def test_a_strata_numbers_do_not_depend_on_the_other_strata():
    a = _table(_inverted_u)
    b = _table(lambda d: 0.7, noise=0.01, rng_seed=3).assign(dataset="other", stratum="other/ae")
    (alone,) = H.verdicts(a, adjust=None, **FAST)
    first, _ = H.verdicts(pd.concat([a, b], ignore_index=True), adjust=None, **FAST)
    assert (alone.over.p_value, alone.under.p_value) == (first.over.p_value, first.under.p_value)
    assert alone.over.effect_ci == first.over.effect_ci and alone.best_set == first.best_set
