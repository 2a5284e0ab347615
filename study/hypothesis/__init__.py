"""Does lower latent entropy give better anomaly detection, and where?

The paper's claim, made testable per stratum (one data set x one model). Every verdict
comes from a test whose false-positive rate is measured by simulation
(``tests/study/test_calibration.py``; the matrix in docs/report.md).

**Two branches.** ``d*`` is the latent_dim with the highest mean AUC. Over capacity: the
studentised max-t of the differences to the largest latent_dim,
``T = max_j (mean_j - mean_K) / se_j``; under capacity: the same against the smallest.
``se_j`` uses a seed variance per latent_dim moderated toward the common one (empirical
Bayes, as limma's moderated t), so a noisier latent_dim does not drive the maximum. The
null is a parametric bootstrap from the same variance model under a flat curve, with
the variances re-estimated and d* re-chosen in every draw
(:func:`study.stats.max_t_batch`). Each branch: ``supported`` when its Holm-adjusted p
(across strata) <= alpha, ``contradicted`` (over capacity) when AUC keeps rising (an
intersection-union test), ``not shown`` otherwise, ``not tested`` with the reason.

**Headline: the inverted U.** ``supported`` needs both drops (intersection-union: the
larger adjusted p); one drop only says which (``over-capacity drop only``,
``under-capacity drop only``); ``contradicted`` when the over-capacity branch is. A ``not
tested`` stratum shows no d*.

**Two levels of uncertainty.** All seeds share one test set. With the per-image scores
(``scores.parquet``) the DeLong covariance of the mean AUCs over test images (paired
across latent_dims) is added, and the model x image interaction it holds is taken out of
the seed variance (the training variance), so nothing is counted twice
(:mod:`study.hypothesis.images`). One seed with scores: only conditional on the trained
models, so ``not tested`` with the conditional result in the reason.

**The effect** is the AUC drop from ``d*`` to the reference with a simultaneous interval at
level 1 - alpha. The *set* of latent_dims not distinguishable from ``d*`` (studentised
range) is the interval for ``d*`` itself.

**Descriptions, not verdicts:** Spearman rho of latent entropy vs AUC on each branch and
over all trials, with bootstrap intervals that resample seeds within each latent_dim.

**Entropy at fixed latent_dim** (:func:`fixed_latent_dim_tests`): per data set x model x
latent_dim, on the knob that sets entropy (kl_weight, constraint_weight, MemAE's memory,
weight_decay; the plain AE as level 0): a manipulation check, then a max-t against the
least regularised level.

**From summaries and per metric**: :func:`verdicts_from_summary` (mean, sd, n per
latent_dim, e.g. the paper's Table 1) and :func:`verdicts_by_metric` (AUC, AP, pixel AP,
best Dice; one Holm family).

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
