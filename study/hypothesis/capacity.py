"""The latent-dimension verdict per stratum: the over- and under-capacity max-t tests,
the descriptive correlations and the label-free predictions (see the package docstring).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ae4ad.latent import (
    DEFAULT_LATENT_DIM_CANDIDATES,
    elbow_latent_dim,
    predict_latent_dim_from_intrinsic_dim,
)
from study.hypothesis.images import ScoreIndex
from study.hypothesis.records import (
    CONFIG_COLUMNS,
    CONTRADICTED,
    HEADLINE_TEST,
    MIN_CORRELATION_TRIALS,
    NOT_SHOWN,
    NOT_TESTED,
    OVER_TEST,
    SUPPORTED,
    UNDER_TEST,
    CapacityTest,
    Correlation,
    FixedDimTest,
    LatentDimPrediction,
    StratumVerdict,
    Uncertainty,
    check_higher_is_better,
    format_p_clause,
)
from study.stats import (
    Design,
    GroupMeans,
    MaxTResult,
    holm,
    max_t_batch,
    spearman_ci,
)

# ----------------------------------------------------------------- label-free predictions


def predict_from_intrinsic_dim(
    intrinsic_dim: float, candidates: Sequence[int] = DEFAULT_LATENT_DIM_CANDIDATES
) -> int | None:
    """Label-free latent_dim from the image intrinsic dimension (the smallest candidate
    >= its rounded value; ``ae4ad.latent.predict_latent_dim_from_intrinsic_dim``).

    Example:
        >>> predict_from_intrinsic_dim(5.3), predict_from_intrinsic_dim(float("nan"))
        (8, None)
    """
    try:
        return int(predict_latent_dim_from_intrinsic_dim(float(intrinsic_dim), candidates))
    except (TypeError, ValueError):
        return None


def elbow_from_errors(latent_dims: Sequence[int], errors: Sequence[float]) -> int | None:
    """Label-free latent_dim from the elbow of the normal reconstruction error against
    latent_dim (``ae4ad.latent.elbow_latent_dim``); None without finite errors.

    Example:
        >>> elbow_from_errors([1, 2, 4, 8, 16, 32], [1.0, 0.6, 0.3, 0.25, 0.24, 0.23])
        4
    """
    try:
        return int(elbow_latent_dim(latent_dims, errors))
    except (TypeError, ValueError):
        return None


def _predictions(
    dims: np.ndarray,
    intrinsic: np.ndarray,
    val_error: np.ndarray,
    best: int | None,
    best_set: Sequence[int],
    means: dict[int, float],
) -> tuple[LatentDimPrediction, ...]:
    """Label-free predictions from the training images' intrinsic dimension and the
    validation reconstruction error of the trials (arrays aligned with ``dims``)."""
    candidates = sorted({int(d) for d in dims}) or list(DEFAULT_LATENT_DIM_CANDIDATES)

    def make(method: str, pred: int | None, source: float, reason: str) -> LatentDimPrediction:
        ratio = pred / best if (pred is not None and best) else math.nan
        inside = None if (pred is None or not best_set) else pred in best_set
        lost = means[best] - means[pred] if (pred in means and best in means) else math.nan
        return LatentDimPrediction(method, pred, source, best, ratio, reason, inside, lost)

    out = []
    method = "image intrinsic dimension (TwoNN, training images)"
    finite = intrinsic[np.isfinite(intrinsic)]
    if len(finite) == 0:
        out.append(make(method, None, math.nan, "no image_intrinsic_dim_twonn values"))
    else:
        idim = float(np.median(finite))
        pred = predict_from_intrinsic_dim(idim, candidates)
        out.append(make(method, pred, idim, f"intrinsic dimension {idim:.2f} -> smallest "
                        "tried latent_dim >= it"))  # fmt: skip
    method = "elbow of the validation reconstruction error (normal images)"
    ok = np.isfinite(val_error)
    if not ok.any():
        why = "not available: the data set has no validation split (test data is never used)"
        out.append(make(method, None, math.nan, why))
    else:
        gm = GroupMeans.of(val_error[ok], dims[ok])
        pred = elbow_from_errors(gm.groups, gm.means)
        src = float(gm.means[list(gm.groups).index(pred)]) if pred is not None else math.nan
        out.append(make(method, pred, src, "from recon_error_val_normal"))
    return tuple(out)


# ----------------------------------------------------------------------------- per stratum


def _status_reason(g: pd.DataFrame) -> str:
    """``no completed trial: 12 early-stopped at epoch 5`` and the like."""
    if "status" not in g.columns or g.empty:
        return "no completed trial"
    parts = []
    for status, rows in g.groupby(g["status"].astype(str), sort=False):
        text = f"{len(rows)} {status}"
        if status == "early-stopped" and "epochs_done" in rows.columns:
            epochs = sorted({int(e) for e in pd.to_numeric(rows["epochs_done"]).dropna()})
            if epochs:
                shown = ", ".join(str(e) for e in epochs[:4]) + (", ..." if len(epochs) > 4 else "")
                text += f" at epoch{'s' if len(epochs) > 1 else ''} {shown}"
        parts.append(text)
    return "no completed trial: " + "; ".join(parts)


def _like_for_like(g: pd.DataFrame, varying: list[str]) -> tuple[np.ndarray, str, str]:
    """Positions (in ``g``) of the largest subset in which only latent_dim and seed vary.

    Returns ``(positions, note, refusal)``: the note says which subset was used; the
    refusal is non-empty when no subset can test latent_dim."""
    keys = g[varying].astype(str).agg(" | ".join, axis=1).to_numpy()
    dims = g["latent_dim"].to_numpy()
    best_key, best_size = None, (-1, -1)
    for key in dict.fromkeys(keys):
        sel = keys == key
        size = (len(np.unique(dims[sel])), int(sel.sum()))
        if size > best_size:
            best_key, best_size = key, size
    pos = np.flatnonzero(keys == best_key)
    names = ", ".join(varying)
    if best_size[0] < 2 or best_size[1] <= best_size[0]:
        refusal = (
            f"latent_dim varies together with {names}: no like-for-like subset with 2 or "
            "more latent_dims and a repeated one; a grid over latent_dim (with seeds) is "
            "needed to test the hypothesis (the report's search diagnostics show how the "
            "search's objective depends on latent_dim)"
        )
        return pos, "", refusal
    first = g.iloc[pos[0]]
    values = ", ".join(f"{c} = {first[c]}" for c in varying)
    note = (
        f"latent_dim varies together with {names}; tested on the like-for-like subset "
        f"{values} ({len(pos)} of {len(g)} trials)"
    )
    return pos, note, ""


def _not_tested(branch: str, reason: str) -> CapacityTest:
    nan = math.nan
    name = OVER_TEST if branch == "over-capacity" else UNDER_TEST
    return CapacityTest(branch, name, None, None, nan, nan, nan, nan, (nan, nan), NOT_TESTED,
                        reason)  # fmt: skip


@dataclass
class _Stratum:
    """One stratum's completed trials as arrays, before the Holm adjustment."""

    key: str
    dataset: str
    model: str
    n_trials: int
    dims: np.ndarray
    y: np.ndarray
    entropy: np.ndarray
    intrinsic: np.ndarray
    val_error: np.ndarray
    seeds: np.ndarray
    n_seeds: int
    refusal: str = ""
    note: str = ""
    gm: GroupMeans | None = None
    uncertainty: Uncertainty | None = None
    design: Design | None = None
    conditional: bool = False
    metric: str = "auc"
    over: MaxTResult | None = None
    under: MaxTResult | None = None


def _column(df: pd.DataFrame, name: str) -> np.ndarray:
    if name not in df.columns:
        return np.full(len(df), math.nan)
    return pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float)


def _prepare(
    key: str,
    df: pd.DataFrame,
    rows: np.ndarray,
    cols: dict[str, np.ndarray],
    varying: list[str],
) -> tuple[_Stratum, np.ndarray]:
    """The completed trials of one stratum (``rows``: its positions in ``df``; ``cols``:
    the columns the tests read, as arrays aligned with ``rows``). Returns the stratum and
    its trial ids."""
    keep = cols["completed"] & np.isfinite(cols["y"])
    note = refusal = ""
    if varying and len(np.unique(cols["dims"][keep])) > 1:
        pos, note, refusal = _like_for_like(df.iloc[rows[keep]], varying)
        sel = np.zeros(len(rows), dtype=bool)
        sel[np.flatnonzero(keep)[pos]] = True
        keep = sel
    seeds = cols["seed"][keep]
    s = _Stratum(
        key=key,
        dataset=str(cols["dataset"][0]),
        model=str(cols["model"][0]),
        n_trials=int(keep.sum()),
        dims=cols["dims"][keep],
        y=cols["y"][keep],
        entropy=cols["entropy"][keep],
        intrinsic=cols["intrinsic"][keep],
        val_error=cols["val_error"][keep],
        seeds=seeds,
        n_seeds=len(set(seeds.tolist())) if len(seeds) else 0,
        refusal=refusal,
        note=note,
    )
    if not keep.any():
        s.refusal = _status_reason(df.iloc[rows])
    return s, cols["trial_id"][keep]


def _set_design(s: _Stratum, trial_ids: np.ndarray, scores: ScoreIndex | None, metric: str) -> None:
    """The stratum's group means, its uncertainty and the inputs of the max-t tests (or
    the refusal that says why there is no test)."""
    if s.refusal:
        s.uncertainty = Uncertainty("seeds", s.n_seeds, 0, math.nan)
        if len(s.y):
            s.gm = GroupMeans.of(s.y, s.dims)
        return
    gm = s.gm = GroupMeans.of(s.y, s.dims)
    level, why = None, "per-image scores not given"
    if scores is not None and metric == "auc" and len(gm.groups) > 1:
        order = np.argsort(s.dims, kind="stable")
        level, why = scores.level([trial_ids[order][s.dims[order] == d] for d in gm.groups])
    replicated = bool(np.any(gm.counts > 1))
    df = int(np.sum(gm.counts - 1))
    sd = float(np.sqrt(np.nanmean(gm.variances))) if replicated else math.nan
    if level is not None:
        note = (f"DeLong covariance over {level.n_images} test images, paired across "
                "latent_dims; training variance = the seed variance per latent_dim "
                "(moderated) less the model x image interaction it already holds")  # fmt: skip
        if not replicated:
            note = (f"DeLong covariance over {level.n_images} test images only: conditional "
                    "on these trained models; training noise unmeasured (1 seed)")  # fmt: skip
        u = Uncertainty("seeds and test images", s.n_seeds, df, sd, level.n_images, note)
    else:
        note = (
            f"seeds only ({why}); the test set is taken as fixed; per-latent_dim "
            "seed variances moderated toward their common value (empirical Bayes)"
        )
        u = Uncertainty("seeds", s.n_seeds, df, sd, 0, note)
    s.uncertainty = u
    if len(gm.groups) < 2:
        s.refusal = "only one latent_dim"
    elif not replicated and level is None:
        s.refusal = "one trial per latent_dim (one seed) and no per-image scores: no variance"
    elif replicated and np.nansum(gm.variances) == 0 and level is None:
        s.refusal = f"{metric} does not vary between seeds: no variance"
    if s.refusal:
        return
    s.conditional = not replicated
    cov = None if level is None else level.cov[None]
    inter = None if level is None else level.interaction[None]
    s2 = None if s.conditional else gm.variances[None]
    s.design = Design(gm.means[None], s2, gm.counts, cov, inter)


def _run_tests(strata: list[_Stratum], alpha: float, n_sim: int, seed: int) -> None:
    """The max-t tests of every stratum that has a design, strata with the same design
    shape run as one batch (each stratum's numbers do not depend on the batch)."""
    batches: dict[tuple, list[_Stratum]] = {}
    for s in strata:
        if s.design is not None:
            d = s.design
            key = (tuple(d.counts), d.s2 is None, d.cov is None)
            batches.setdefault(key, []).append(s)
    for group in batches.values():
        ds = [s.design for s in group]

        def stack(name: str, ds=ds):
            vals = [getattr(d, name) for d in ds]
            return None if vals[0] is None else np.concatenate(vals)

        d = Design(stack("means"), stack("s2"), ds[0].counts, stack("cov"), stack("interaction"))
        k = d.means.shape[1]
        seeds = [stratum_seed(seed, s.key if s.metric == "auc" else f"{s.key}:{s.metric}")
                 for s in group]  # fmt: skip
        over, under = max_t_batch(d, [k - 1, 0], level=1 - alpha, n_sim=n_sim, seed=seeds)
        for i, s in enumerate(group):
            s.over = MaxTResult.of(over, i, s.gm.groups)
            s.under = MaxTResult.of(under, i, s.gm.groups)


def stratum_seed(seed: int, key: str) -> int:
    """The seed of one stratum's null draws: from the study's ``seed`` and the stratum's
    name, so a stratum's numbers do not depend on the other strata of the table."""
    return zlib.crc32(f"{seed}:{key}".encode())


def _decide(s: _Stratum, branch: str, p_adj: float, p_rise_adj: float, alpha: float):
    over = branch == "over-capacity"
    r = s.over if over else s.under
    if r is None:
        return _not_tested(branch, s.refusal)
    name = OVER_TEST if over else UNDER_TEST
    if s.conditional:
        cond = (f"1 seed: training noise unmeasured, so nothing is claimed about retrained "
                f"models; conditional on these trained models (test images only), AUC "
                f"d={r.best} minus d={r.reference}: {r.effect:+.3f}, p "
                f"{format_p_clause(r.p_value)}")  # fmt: skip
        if r.best == r.reference:
            where = "largest" if over else "smallest"
            cond = (f"1 seed: training noise unmeasured; the best mean AUC of these trained "
                    f"models is at the {where} latent_dim tried")  # fmt: skip
        return _not_tested(branch, cond)
    if r.best == r.reference:
        where = "largest" if over else "smallest"
        verdict, reason = NOT_SHOWN, f"the best mean AUC is at the {where} latent_dim tried"
    elif p_adj <= alpha:
        verdict, reason = SUPPORTED, f"AUC at d* = {r.best} is higher than at d = {r.reference}"
    else:
        verdict = NOT_SHOWN
        reason = f"the AUC difference between d* = {r.best} and d = {r.reference} is within noise"
    if over and verdict != SUPPORTED and p_rise_adj <= alpha:
        verdict = CONTRADICTED
        reason = f"AUC keeps rising: d = {r.reference} is better than every other latent_dim"
    return CapacityTest(
        branch, name, r.best, r.reference, r.statistic, r.p_value, p_adj, r.effect,
        r.effect_ci, verdict, reason, r.p_reference_best,
    )  # fmt: skip


def _stratum_key(df: pd.DataFrame) -> pd.Series:
    if "stratum" in df.columns:
        return df["stratum"].astype(str)
    return df["dataset"].astype(str) + "/" + df["model"].astype(str)


def _varying_config(df: pd.DataFrame) -> dict[str, list[str]]:
    """Per stratum, the config columns (besides latent_dim and seed) that vary among its
    completed trials."""
    done = df[df["status"] == "completed"] if "status" in df.columns else df
    cols = [c for c in CONFIG_COLUMNS if c in done.columns]
    if not cols or done.empty:
        return {}
    n = done.groupby("_stratum", sort=False)[cols].nunique(dropna=False)
    return {str(k): [c for c in cols if row[c] > 1] for k, row in n.iterrows()}


def verdicts(
    trials: pd.DataFrame,
    scores: pd.DataFrame | None = None,
    alpha: float = 0.05,
    *,
    entropy_col: str = "latent_entropy_gaussian",
    metric: str = "auc",
    n_sim: int = 10000,
    n_boot: int = 2000,
    seed: int = 0,
    adjust: str | None = "holm",
) -> list[StratumVerdict]:
    """One :class:`StratumVerdict` per stratum of a study's trials table.

    ``trials`` has columns dataset, model, latent_dim, seed, status, the metric and the
    entropy column (``stratum`` and ``trial_id`` optional); only completed trials are
    analysed, but every stratum in the table gets a verdict (``not tested`` with the
    reason when none completed). ``scores`` (``scores.parquet``) adds the test-image level
    of uncertainty. ``adjust="holm"`` adjusts the p-values across strata (None: raw).
    ``n_sim`` null draws; ``n_boot`` bootstrap resamples of the descriptive Spearman
    intervals (0 skips the descriptions). Strata come out in the order they first appear.

    Raises ``ValueError`` naming the missing column when latent_dim, dataset, model or the
    metric is absent, when alpha is not in (0, 1), or when the metric is registered as
    lower-is-better (:func:`~study.hypothesis.records.check_higher_is_better`).
    """
    check_higher_is_better(metric)
    for col in ("dataset", "model", "latent_dim", metric):
        if col not in trials.columns:
            raise ValueError(
                f"trials table: column {col!r} is missing; the hypothesis tests need "
                f"dataset, model, latent_dim and {metric}"
            )
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a number in (0, 1), got {alpha!r}")
    strata = _strata(trials, scores, metric, entropy_col)
    return _conclude(strata, entropy_col, alpha, n_sim, n_boot, seed, adjust)


def _strata(
    trials: pd.DataFrame, scores: pd.DataFrame | None, metric: str, entropy_col: str
) -> list[_Stratum]:
    """The strata of a trials table for one metric, with their test designs."""
    d = pd.to_numeric(trials["latent_dim"], errors="coerce")
    df = trials[d.notna()].assign(latent_dim=d[d.notna()].astype(int))
    df = df.assign(_stratum=_stratum_key(df))
    if "trial_id" not in df.columns:
        df["trial_id"] = [f"row-{i}" for i in range(len(df))]
    varying = _varying_config(df)
    arrays = dict(
        completed=(df["status"] == "completed").to_numpy()
        if "status" in df.columns
        else np.ones(len(df), dtype=bool),
        y=_column(df, metric),
        dims=df["latent_dim"].to_numpy(dtype=int),
        entropy=_column(df, entropy_col),
        intrinsic=_column(df, "image_intrinsic_dim_twonn"),
        val_error=_column(df, "recon_error_val_normal"),
        seed=df["seed"].to_numpy() if "seed" in df.columns else np.zeros(len(df)),
        trial_id=df["trial_id"].astype(str).to_numpy(),
        dataset=df["dataset"].astype(str).to_numpy(),
        model=df["model"].astype(str).to_numpy(),
    )
    index = ScoreIndex(scores) if scores is not None and metric == "auc" else None
    strata = []
    for key, pos in df.groupby("_stratum", sort=False).indices.items():
        cols = {k: v[pos] for k, v in arrays.items()}
        s, ids = _prepare(str(key), df, pos, cols, varying.get(str(key), []))
        s.metric = metric
        _set_design(s, ids, index, metric)
        strata.append(s)
    return strata


HIGHER_IS_BETTER = ("auc", "ap", "pixel_ap", "best_dice")
"""The detection metrics that get a capacity verdict each (:func:`verdicts_by_metric`)."""


def verdicts_by_metric(
    trials: pd.DataFrame,
    scores: pd.DataFrame | None = None,
    alpha: float = 0.05,
    *,
    metrics: Sequence[str] = HIGHER_IS_BETTER,
    n_sim: int = 10000,
    seed: int = 0,
    adjust: str | None = "holm",
) -> list[StratumVerdict]:
    """A capacity verdict per stratum x metric, for every metric of ``metrics`` the
    trials table has values for (image AUC and AP always; pixel AP and best Dice where
    the data set has masks). Multiplicity: each branch's p-values are Holm-adjusted over
    all strata x metrics together (one family). The study's headline stays
    :func:`verdicts` on image AUC, whose own family is the strata; so an AUC row here
    can carry a larger adjusted p than the headline. Per-image scores (DeLong) serve
    AUC only; the other metrics are tested from the seeds. No descriptions
    (``n_boot`` 0). Rows come per metric in the order of ``metrics``.

    Raises ``ValueError`` for a lower-is-better metric or an alpha outside (0, 1).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a number in (0, 1), got {alpha!r}")
    strata = []
    for metric in metrics:
        check_higher_is_better(metric)
        if metric in trials.columns:
            has = pd.to_numeric(trials[metric], errors="coerce").notna()
            if has.any():  # strata without values for this metric get no row
                strata += _strata(trials[has.to_numpy()], scores, metric, "")
    return _conclude(strata, "", alpha, n_sim, 0, seed, adjust)


def _conclude(
    strata: list[_Stratum],
    entropy_col: str,
    alpha: float,
    n_sim: int,
    n_boot: int,
    seed: int,
    adjust: str | None,
) -> list[StratumVerdict]:
    """Run the strata's tests, adjust across strata and assemble the verdicts."""
    _run_tests(strata, alpha, n_sim, seed)

    def adjusted(values: list[float]) -> list[float]:
        return holm(values) if adjust == "holm" else values

    p_over = adjusted([s.over.p_value if s.over else math.nan for s in strata])
    p_rise = adjusted([s.over.p_reference_best if s.over else math.nan for s in strata])
    p_under = adjusted([s.under.p_value if s.under else math.nan for s in strata])
    return [
        _assemble(s, entropy_col, alpha, n_boot, seed, po, pr, pu)
        for s, po, pr, pu in zip(strata, p_over, p_rise, p_under)
    ]


def correlation(
    dims: np.ndarray,
    entropy: np.ndarray,
    y: np.ndarray,
    *,
    branch: str,
    n_boot: int,
    seed: int,
    level: float = 0.95,
) -> Correlation:
    """The Spearman description of entropy vs the metric over the given trials, with a
    bootstrap percentile interval at ``level`` that resamples trials (seeds) within each
    latent_dim: the latent_dims are the design and stay fixed; the test-image sampling
    and the pairing of seeds across latent_dims are ignored."""
    ok = np.isfinite(entropy) & np.isfinite(y)
    dims, entropy, y = dims[ok], entropy[ok], y[ok]
    kept = tuple(int(d) for d in np.unique(dims))
    base = dict(branch=branch, n=len(y), n_latent_dims=len(kept), latent_dims=kept, level=level)
    if n_boot == 0:
        return Correlation(**base, rho=math.nan, ci_low=math.nan, ci_high=math.nan,
                           reason="not computed (n_boot=0)")  # fmt: skip
    if len(y) < MIN_CORRELATION_TRIALS or len(kept) < 2:
        why = f"too few trials ({len(y)} at {len(kept)} latent dims)"
        if not ok.any():
            why = "no latent entropy values"
        return Correlation(**base, rho=math.nan, ci_low=math.nan, ci_high=math.nan, reason=why)
    rho, lo, hi = spearman_ci(entropy, y, strata=dims, level=level, n_boot=n_boot, seed=seed)
    why = "" if math.isfinite(rho) else "the latent entropy or the metric is constant"
    return Correlation(**base, rho=rho, ci_low=lo, ci_high=hi, reason=why)


def _assemble(
    s: _Stratum,
    entropy_col: str,
    alpha: float,
    n_boot: int,
    seed: int,
    p_over: float,
    p_rise: float,
    p_under: float,
) -> StratumVerdict:
    gm = s.gm
    groups = [int(g) for g in gm.groups] if gm is not None else []
    means = {g: float(m) for g, m in zip(groups, gm.means)} if gm is not None else {}
    counts = {g: int(c) for g, c in zip(groups, gm.counts)} if gm is not None else {}
    std = {g: math.sqrt(v) for g, v in zip(groups, gm.variances)} if gm is not None else {}
    best = max(means, key=lambda g: (means[g], -g)) if means else None
    over = _decide(s, "over-capacity", p_over, p_rise, alpha)
    tested = over.verdict != NOT_TESTED
    best_set = s.over.best_set if tested else ()
    corr = dict(n_boot=n_boot, level=1 - alpha)
    if best is None:
        over_rho = under_rho = correlation(s.dims, s.entropy, s.y, branch="over-capacity",
                                           seed=seed, **corr)  # fmt: skip
    else:
        hi, lo = s.dims >= best, s.dims <= best
        over_rho = correlation(s.dims[hi], s.entropy[hi], s.y[hi], branch="over-capacity",
                               seed=seed, **corr)  # fmt: skip
        under_rho = correlation(s.dims[lo], s.entropy[lo], s.y[lo], branch="under-capacity",
                                seed=seed + 1, **corr)  # fmt: skip
    overall = correlation(s.dims, s.entropy, s.y, branch="global", seed=seed + 2, **corr)
    return StratumVerdict(
        stratum=s.key,
        dataset=s.dataset,
        model=s.model,
        metric=s.metric,
        entropy_col=entropy_col,
        alpha=alpha,
        n_trials=s.n_trials,
        n_seeds=s.n_seeds,
        latent_dims=tuple(groups),
        mean_by_latent_dim=means,
        std_by_latent_dim=std,
        count_by_latent_dim=counts,
        best_latent_dim=best,
        best_mean=means.get(best, math.nan),
        best_std=std.get(best, math.nan),
        best_set=tuple(int(d) for d in best_set),
        best_reason="" if tested else over.reason,
        over=over,
        under=_decide(s, "under-capacity", p_under, math.nan, alpha),
        uncertainty=s.uncertainty,
        over_rho=over_rho,
        under_rho=under_rho,
        overall_rho=overall,
        predictions=_predictions(
            s.dims, s.intrinsic, s.val_error, best if tested else None, best_set, means
        )
        if len(s.dims)
        else (),
        subset=s.note,
    )


# ----------------------------------------------------------------------------- tables


def verdicts_table(
    items: list[StratumVerdict], fixed: Sequence[FixedDimTest] = (), alpha: float = math.nan
) -> pd.DataFrame:
    """The verdicts as a flat table, e.g. for CSV export: per stratum a headline row
    (branch ``inverted U``: the headline word, the intersection-union p), then one row per
    branch (over- and under-capacity); then one per fixed-latent_dim test (branch ``fixed
    latent_dim``, ``effect`` = AUC of the best knob level minus the weakest). A ``not
    tested`` row carries no d* and no effect."""
    rows = []
    for v in items:
        tested = v.verdict != NOT_TESTED
        base = dict(stratum=v.stratum, dataset=v.dataset, model=v.model, metric=v.metric,
                    alpha=v.alpha, best_latent_dim=v.best_latent_dim if tested else None,
                    best_set=" ".join(str(d) for d in v.best_set),
                    uncertainty=v.uncertainty.level, n_trials=v.n_trials, n_seeds=v.n_seeds,
                    n_test_images=v.uncertainty.n_test_images, subset=v.subset)  # fmt: skip
        rows.append(
            dict(
                base,
                branch="inverted U",
                test=HEADLINE_TEST,
                verdict=v.verdict,
                p_value=max(v.over.p_value, v.under.p_value),
                p_adjusted=v.p_value,
                reason=v.over.reason
                if not tested
                else f"over capacity {v.over.verdict}, under capacity {v.under.verdict}",
            )  # fmt: skip
        )
        for t in (v.over, v.under):
            lo, hi = t.effect_ci
            rows.append(
                dict(
                    base,
                    branch=t.branch,
                    test=t.name,
                    verdict=t.verdict,
                    p_value=t.p_value,
                    p_adjusted=t.p_adjusted,
                    reference_latent_dim=t.reference_dim,
                    effect=t.effect,
                    effect_ci_low=lo,
                    effect_ci_high=hi,
                    reason=t.reason,
                )  # fmt: skip
            )
    for f in fixed:
        lo, hi = f.effect_ci
        rows.append(
            dict(
                stratum=f"{f.dataset}/{f.model}",
                dataset=f.dataset,
                model=f.model,
                metric=f.metric,
                alpha=f.alpha if math.isfinite(f.alpha) else alpha,
                branch="fixed latent_dim",
                test=f.name,
                verdict=f.verdict,
                p_value=f.p_value,
                p_adjusted=f.p_adjusted,
                effect=f.effect,
                effect_ci_low=lo,
                effect_ci_high=hi,
                n_trials=f.n,
                latent_dim=f.latent_dim,
                knob=f.knob,
                manipulation_p=f.manipulation_p,
                best_level=f.best_level,
                reason=f.reason,
            )  # fmt: skip
        )
    return pd.DataFrame(rows)
