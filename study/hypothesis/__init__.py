"""Does lower latent entropy give better anomaly detection, and where?

The paper's claim, made testable per stratum (one data set x one model). Every verdict
comes from a test whose false-positive rate is measured by simulation
(``tests/study/test_calibration.py``; figures in docs/report.md).

**Headline: the over-capacity drop.** ``d*`` is the latent_dim with the highest mean AUC.
The statistic is the studentised max-t of the differences to the largest latent_dim,
``T = max_j (mean_j - mean_K) / se_j`` (``se_j`` from the pooled within-latent_dim
variance over seeds, plus the test-set covariance below). Its null distribution is
simulated under a *flat* curve with the argmax recomputed in every draw (Gaussian errors,
pooled variance with its chi-square uncertainty), so choosing ``d*`` from the same trials
costs nothing in calibration; a flat curve is the least favourable null (any curve that
does not drop only makes ``T`` smaller). ``supported`` when the (Holm-adjusted) p <= alpha,
``contradicted`` when AUC keeps rising (the largest latent_dim is better than every other,
an intersection-union test of the pairwise one-sided t-tests), ``not shown`` otherwise,
``not tested`` when the data cannot answer (a reason says why).

**Under capacity** mirrors it against the smallest latent_dim (the paper predicts too
little entropy hurts too).

**Two levels of uncertainty.** All seeds share one test set, so every AUC carries the
same test-image sampling error. With the per-image scores (``scores.parquet``) the
covariance of the mean AUCs over test images is added to the seed variance: a DeLong
covariance of correlated AUCs, paired across latent_dims. Without them, seeds only, and
the verdict says so.

**The effect** is the AUC drop from ``d*`` to the largest latent_dim, with a 95 %
simultaneous interval (max-|t| over all latent_dims, so it stays valid after choosing
``d*``). The *set* of latent_dims not distinguishable from ``d*`` (studentised range) is
the interval for ``d*`` itself.

**Descriptions, not verdicts:** Spearman rho of latent entropy vs AUC on each branch and
over all trials, with bootstrap intervals.

**Entropy at fixed latent_dim** (:func:`fixed_latent_dim_tests`): the paper's claim is
about entropy, and every estimator rises with latent_dim, so the branch correlations
cannot separate the two. Among trials that share a latent_dim (per data set) but differ
in what sets entropy (regularisers, weight decay, seeds), a stratified permutation test
(AUC permuted within each latent_dim) of the pooled within-latent_dim Spearman rho.

**Label-free predictions** of ``d*`` never read test data: the intrinsic dimension of the
training images, and the elbow of the *validation* reconstruction error.

Every random draw comes from ``numpy.random.default_rng(seed)`` so numbers repeat.

Example:
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> auc = {1: .60, 2: .62, 4: .64, 8: .71, 16: .72, 32: .70, 64: .69, 128: .68}
    >>> rows = [dict(dataset="toy", model="ae", latent_dim=d, seed=s, status="completed",
    ...              auc=a + 0.01 * rng.standard_normal(), latent_entropy_gaussian=np.log2(d))
    ...         for d, a in auc.items() for s in (0, 1)]
    >>> (v,) = verdicts(pd.DataFrame(rows), n_sim=4000)
    >>> v.best_latent_dim, v.verdict, v.p_value < 0.05
    (8, 'supported', True)
"""

from study.hypothesis.capacity import (
    HIGHER_IS_BETTER,
    correlation,
    elbow_from_errors,
    predict_from_intrinsic_dim,
    verdicts,
    verdicts_by_metric,
    verdicts_table,
)
from study.hypothesis.fixed_dim import fixed_latent_dim_tests
from study.hypothesis.records import (
    CONFIG_COLUMNS,
    CONTRADICTED,
    ENTROPY_COLUMNS,
    HEADLINE_TEST,
    HEADLINES,
    NOT_SHOWN,
    NOT_TESTED,
    OVER_ONLY,
    SUPPORTED,
    UNDER_ONLY,
    VERDICTS,
    CapacityTest,
    Correlation,
    FixedDimTest,
    LatentDimPrediction,
    StratumVerdict,
    Uncertainty,
    format_level,
    format_p,
    format_p_clause,
    format_ratio,
)
from study.hypothesis.summary import verdicts_from_summary

__all__ = [
    "CONFIG_COLUMNS",
    "CONTRADICTED",
    "ENTROPY_COLUMNS",
    "HIGHER_IS_BETTER",
    "HEADLINES",
    "HEADLINE_TEST",
    "NOT_SHOWN",
    "NOT_TESTED",
    "OVER_ONLY",
    "SUPPORTED",
    "UNDER_ONLY",
    "VERDICTS",
    "CapacityTest",
    "Correlation",
    "FixedDimTest",
    "LatentDimPrediction",
    "StratumVerdict",
    "Uncertainty",
    "correlation",
    "elbow_from_errors",
    "fixed_latent_dim_tests",
    "format_level",
    "format_p",
    "format_p_clause",
    "format_ratio",
    "predict_from_intrinsic_dim",
    "verdicts",
    "verdicts_by_metric",
    "verdicts_from_summary",
    "verdicts_table",
]
