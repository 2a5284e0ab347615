"""Entropy at a fixed latent dimension: the paper's claim about entropy itself, per model.

Every latent entropy estimator rises with latent_dim, so a test across latent_dims cannot
tell entropy from latent_dim. Here, per data set x model x latent_dim, the groups are the
levels of the knob the study designed to set the entropy (a VAE's ``kl_weight``, a
constrained AE's ``constraint_weight``, MemAE's memory, ``weight_decay``; the plain AE of
the same data set, latent_dim and architecture as level 0 where the study has it),
ordered from the least to the most regularised. Models are never pooled: a model that
simply has lower entropy and lower AUC says nothing about entropy within a model.

1. **Manipulation check**: the measured entropy must fall with the knob (a one-sided
   Spearman trend test over the trials, permutation p at alpha); else ``not tested: the
   knob did not lower entropy``.
2. **The claim**: does lowering the entropy from its least regularised level raise AUC at
   some level? The max-t of every level against the weakest (seed variances per level
   moderated, the best level re-chosen in every null draw; :func:`study.stats.max_t_batch`),
   Holm across data set x model x latent_dim: ``supported`` at adjusted p <= alpha.
3. ``contradicted`` only when the weakest level beats every other (intersection-union).
   An AUC collapse at the strongest level is the under-capacity side the paper expects
   (too little entropy hurts) and is reported as such, not as evidence against the claim.
4. Seeds are the replicates: every level needs 2 or more trials (3 recommended).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from study.hypothesis.capacity import _column, stratum_seed
from study.hypothesis.records import (
    CONFIG_COLUMNS,
    CONTRADICTED,
    NOT_SHOWN,
    NOT_TESTED,
    SUPPORTED,
    FixedDimTest,
    check_higher_is_better,
    format_p_clause,
)
from study.stats import Design, GroupMeans, holm, max_t_batch, trend_test

KNOBS: dict[str, tuple[str, ...]] = {
    "vae": ("kl_weight",),
    "constrained_ae": ("constraint_weight",),
    "memae": ("mem_size", "shrink_threshold", "entropy_weight"),
}
"""Per model, the parameters designed to lower its latent entropy (``weight_decay`` counts
for every model)."""

STRONGER_WHEN_SMALLER = frozenset({"mem_size"})
"""Knobs that regularise more at smaller values (fewer memory slots)."""

PLAIN_MODEL = "ae"


def fixed_latent_dim_tests(
    trials: pd.DataFrame,
    alpha: float = 0.05,
    *,
    entropy_col: str = "latent_entropy_gaussian",
    metric: str = "auc",
    n_perm: int = 5000,
    n_sim: int | None = None,
    seed: int = 0,
    adjust: str | None = "holm",
) -> list[FixedDimTest]:
    """One :class:`FixedDimTest` per data set x model x latent_dim of the completed
    trials (the plain AE is a level of the other models, not a test of its own unless
    its ``weight_decay`` varies). ``n_perm`` permutations for the manipulation check,
    ``n_sim`` null draws for the max-t (default ``n_perm``); ``adjust="holm"`` adjusts
    across the tests (None: raw).

    Example:
        >>> import numpy as np, pandas as pd
        >>> rng = np.random.default_rng(1)
        >>> kl = np.repeat([1e-4, 1e-3, 1e-2], 3)
        >>> df = pd.DataFrame(dict(dataset="toy", model="vae", latent_dim=64, seed=range(9),
        ...     kl_weight=kl, status="completed",
        ...     latent_entropy_gaussian=-np.log10(kl) + 0.1 * rng.normal(size=9),
        ...     auc=0.8 + 0.03 * (kl > 1e-4) + 0.005 * rng.normal(size=9)))
        >>> (t,) = fixed_latent_dim_tests(df, n_perm=2000)
        >>> t.knob, t.verdict, t.best_level != "0.0001"
        ('kl_weight', 'supported', True)
    """
    check_higher_is_better(metric)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a number in (0, 1), got {alpha!r}")
    for col in ("dataset", "model", "latent_dim"):
        if col not in trials.columns:
            raise ValueError(f"trials table: column {col!r} is missing")
    df = trials[trials["status"] == "completed"] if "status" in trials.columns else trials
    cols = _arrays(df, entropy_col, metric)
    keys = [df["dataset"].astype(str), df["model"].astype(str), cols["latent_dim"]]
    cells_at = pd.Series(np.arange(len(df))).groupby(keys, sort=False).indices if len(df) else {}
    plain = {(ds, d): pos for (ds, m, d), pos in cells_at.items() if m == PLAIN_MODEL}
    cells = []
    for (ds, model, d), pos in cells_at.items():
        c = _cell(cols, pos, plain.get((ds, d), np.array([], int)), (ds, model, d), alpha,
                  n_perm, seed)  # fmt: skip
        if c is not None:
            cells.append(c | dict(entropy_col=entropy_col, metric=metric))
    _run_claims(cells, alpha, n_sim or n_perm, seed)
    raw = [c["p"] for c in cells]
    p_adj = holm(raw) if adjust == "holm" else raw
    p_iu = [c["p_weakest"] for c in cells]
    p_iu = holm(p_iu) if adjust == "holm" else p_iu
    return [_finish(c, pa, pw, alpha) for c, pa, pw in zip(cells, p_adj, p_iu)]


def _arrays(df: pd.DataFrame, entropy_col: str, metric: str) -> dict[str, np.ndarray]:
    """The columns the tests read, as float arrays (config columns that are not numbers
    as codes, NaN where unset)."""
    out = {"latent_dim": _column(df, "latent_dim"), "h": _column(df, entropy_col),
           "y": _column(df, metric)}  # fmt: skip
    knobs = {k for ks in KNOBS.values() for k in ks} | {"weight_decay"}
    for c in sorted(set(CONFIG_COLUMNS) | knobs):
        if c not in df.columns:
            continue
        num = pd.to_numeric(df[c], errors="coerce")
        if num.notna().sum() == df[c].notna().sum():
            out[c] = num.to_numpy(dtype=float)
        else:
            codes, _ = pd.factorize(df[c].astype("string"))
            out[c] = np.where(codes < 0, np.nan, codes).astype(float)
    return out


def _nunique(values: np.ndarray) -> int:
    return len(np.unique(values[~np.isnan(values)]))


def _levels(values: np.ndarray, knob: str) -> tuple[np.ndarray, list[str]]:
    """Level index per trial (0 = least regularised, -1 unset) and the level labels."""
    uniq = np.unique(values[np.isfinite(values)])
    if knob in STRONGER_WHEN_SMALLER:
        uniq = uniq[::-1]
    index = {v: i for i, v in enumerate(uniq)}
    return np.array([index.get(v, -1) for v in values]), [f"{knob} = {v:g}" for v in uniq]


def _plain_level(cols: dict[str, np.ndarray], pos: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """The plain AE trials (positions) of the same data set and latent_dim whose config
    agrees with the cell's wherever both set it."""
    keep = np.ones(len(plain), dtype=bool)
    for col in CONFIG_COLUMNS:
        if col in cols and len(plain):
            mine = np.unique(cols[col][pos][~np.isnan(cols[col][pos])])
            if len(mine) == 1:
                theirs = cols[col][plain]
                keep &= np.isnan(theirs) | (theirs == mine[0])
    return plain[keep]


def _cell(
    cols: dict[str, np.ndarray],
    pos: np.ndarray,
    plain: np.ndarray,
    key: tuple,
    alpha: float,
    n_perm: int,
    seed: int,
) -> dict | None:
    """The manipulation check and the arrays of the claim's test for one cell (None for
    plain AE cells whose weight decay does not vary: they are a level of other tests)."""
    dataset, model, dim = str(key[0]), str(key[1]), float(key[2])
    knobs = [c for c in (*KNOBS.get(model, ()), "weight_decay") if c in cols]
    varying = [c for c in knobs if _nunique(cols[c][pos]) > 1]
    if model == PLAIN_MODEL and not varying:
        return None
    out = dict(dataset=dataset, model=model, latent_dim=None if math.isnan(dim) else int(dim),
               knob=", ".join(varying), levels=[], counts=[], auc=[], ent=[], n=len(pos),
               rho=math.nan, p_manip=math.nan, reason="", design=None)  # fmt: skip
    other = [c for c in CONFIG_COLUMNS if c in cols and c not in knobs]
    other = [c for c in other if _nunique(cols[c][pos]) > 1]
    if not varying:
        out["reason"] = f"no entropy knob varies here (looked for {', '.join(knobs) or 'none'})"
    elif len(varying) > 1:
        out["reason"] = f"several knobs vary together ({', '.join(varying)}): no single order"
    elif other:
        out["reason"] = f"{', '.join(other)} also vary: the levels differ in more than the knob"
    if out["reason"]:
        return out
    knob = varying[0]
    level, labels = _levels(cols[knob][pos], knob)
    plain = _plain_level(cols, pos, plain) if model != PLAIN_MODEL else plain[:0]
    if len(plain):
        labels = [f"{PLAIN_MODEL} (level 0)", *labels]
        level = np.r_[np.zeros(len(plain), int), np.where(level >= 0, level + 1, -1)]
        pos = np.r_[plain, pos]
    h, y = cols["h"][pos], cols["y"][pos]
    ok = (level >= 0) & np.isfinite(h) & np.isfinite(y)
    lv, h, y = level[ok], h[ok], y[ok]
    out["n"] = int(ok.sum())
    counts = np.bincount(lv, minlength=len(labels)) if len(lv) else np.zeros(len(labels), int)
    out.update(levels=labels, counts=[int(c) for c in counts])
    if len(labels) < 2:
        out["reason"] = "only one level of the knob"
    elif counts.min() < 2:
        out["reason"] = (
            f"fewer than 2 trials (seeds) at a level ({min(counts)}): no replicate to "
            "measure noise (3 or more per level recommended)"
        )
    if out["reason"]:
        return out
    gm_h, gm = GroupMeans.of(h, lv), GroupMeans.of(y, lv)
    out.update(auc=[float(m) for m in gm.means], ent=[float(m) for m in gm_h.means])
    out["rho"], out["p_manip"] = trend_test(lv, h, n_perm=n_perm, seed=seed)
    if not out["p_manip"] <= alpha:
        out["reason"] = (f"the knob did not lower entropy: Spearman rho of the entropy on "
                         f"the {knob} level {out['rho']:+.2f}, one-sided p "
                         f"{format_p_clause(out['p_manip'])}")  # fmt: skip
        return out
    if np.nansum(gm.variances) == 0:
        out["reason"] = "the metric does not vary between seeds: no variance"
        return out
    out["design"] = Design(gm.means[None], gm.variances[None], gm.counts)
    return out


def _run_claims(cells: list[dict], alpha: float, n_sim: int, seed: int) -> None:
    """The max-t tests of every tested cell, cells with the same counts per level as one
    batch (a cell's numbers do not depend on the batch)."""
    for c in cells:
        c.update(p=math.nan, p_weakest=math.nan, p_collapse=math.nan, best=None,
                 effect=math.nan, ci=(math.nan, math.nan))  # fmt: skip
    batches: dict[tuple, list[dict]] = {}
    for c in cells:
        if c["design"] is not None:
            batches.setdefault(tuple(c["design"].counts), []).append(c)
    for group in batches.values():
        d = Design(
            np.concatenate([c["design"].means for c in group]),
            np.concatenate([c["design"].s2 for c in group]),
            group[0]["design"].counts,
        )
        k = d.means.shape[1]
        seeds = [
            stratum_seed(seed, f"{c['dataset']}/{c['model']}/{c['latent_dim']}") for c in group
        ]
        weak, strong = max_t_batch(d, [0, k - 1], level=1 - alpha, n_sim=n_sim, seed=seeds)
        for i, c in enumerate(group):
            c.update(p=float(weak.p_value[i]), p_weakest=float(weak.p_reference_best[i]),
                     p_collapse=float(strong.p_value[i]), best=int(weak.best[i]),
                     effect=float(weak.effect[i]),
                     ci=(float(weak.ci_low[i]), float(weak.ci_high[i])))  # fmt: skip


def _finish(c: dict, p_adj: float, p_weak: float, alpha: float) -> FixedDimTest:
    reason, verdict = c["reason"], NOT_TESTED
    labels = c["levels"]
    best = labels[c["best"]] if c["best"] is not None else None
    if not reason:
        if c["best"] == 0:
            verdict, reason = NOT_SHOWN, "the best mean AUC is at the least regularised level"
        elif p_adj <= alpha:
            verdict = SUPPORTED
            reason = f"lowering entropy raises AUC: {best} beats {labels[0]}"
        else:
            verdict = NOT_SHOWN
            reason = f"the AUC gain of {best} over {labels[0]} is within noise"
        if verdict != SUPPORTED and p_weak <= alpha:
            verdict = CONTRADICTED
            reason = f"{labels[0]} (the highest entropy) beats every other level"
        if c["p_collapse"] <= alpha and c["best"] != len(labels) - 1:
            reason += (f"; AUC collapses at the strongest level ({labels[-1]}, p "
                       f"{format_p_clause(c['p_collapse'])}): the under-capacity side the "
                       "paper expects, not evidence against the claim")  # fmt: skip
    return FixedDimTest(
        dataset=c["dataset"], model=c["model"], latent_dim=c["latent_dim"], knob=c["knob"],
        levels=tuple(labels), counts=tuple(c["counts"]), mean_auc=tuple(c["auc"]),
        mean_entropy=tuple(c["ent"]), entropy_col=c["entropy_col"], metric=c["metric"],
        n=c["n"], manipulation_rho=c["rho"], manipulation_p=c["p_manip"], best_level=best,
        p_value=c["p"], p_adjusted=p_adj, effect=c["effect"], effect_ci=c["ci"],
        p_weakest_best=c["p_weakest"], p_collapse=c["p_collapse"], verdict=verdict,
        reason=reason, alpha=alpha,
    )  # fmt: skip
