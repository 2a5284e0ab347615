"""What every section and figure reads, computed once per report: the completed trials,
the verdicts, colours per data set and the mean/std over seeds of every metric."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from ae4ad.metrics import METRICS
from study import hypothesis as H
from study.report.figures.style import DATASET_COLOURS, ENTROPY_LABELS, HOVER_KEYS
from study.report.load import RunData, paper_tables
from study.report.values import finite

SUMMARY_COLUMNS: tuple[str, ...] = tuple(METRICS)
"""The columns summarised over seeds: every registered metric (:mod:`ae4ad.metrics`)."""
_EMPTY_AGG = pd.DataFrame(columns=["_stratum", "latent_dim", "mean", "std", "count"])


@dataclass(frozen=True)
class Options:
    """How a report is computed: ``entropy_col`` is the latent statistic the descriptions
    and the fixed-latent_dim test use; ``alpha`` the level of the verdicts; ``n_sim`` the
    null draws of the max-t tests (and permutations of the fixed-latent_dim test);
    ``n_boot`` the bootstrap resamples; ``max_curves`` bounds the learning curves drawn."""

    entropy_col: str = "latent_entropy_gaussian"
    max_curves: int = 240
    n_boot: int = 2000
    n_sim: int = 10000
    alpha: float = 0.05

    def check(self) -> Options:
        """Raises ``ValueError`` for an unknown ``entropy_col`` or an ``alpha`` outside
        (0, 1)."""
        if self.entropy_col not in ENTROPY_LABELS:
            raise ValueError(
                f"entropy_col: unknown latent statistic {self.entropy_col!r}; allowed: "
                f"{', '.join(ENTROPY_LABELS)}"
            )
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha: expected a number in (0, 1), got {self.alpha!r}")
        return self


@dataclass
class Ctx:
    run: RunData
    done: pd.DataFrame  # completed trials with a latent_dim
    all_trials: pd.DataFrame
    verdicts: list[H.StratumVerdict]
    colours: dict[str, str]
    model_index: dict[str, int]
    entropy_col: str
    max_curves: int
    summary: dict[str, pd.DataFrame] = field(default_factory=dict)
    hover: pd.Series = field(default_factory=lambda: pd.Series(dtype=str))
    cache: dict = field(default_factory=dict)
    fixed: list[H.FixedDimTest] = field(default_factory=list)
    by_metric: list[H.StratumVerdict] = field(default_factory=list)  # a verdict per metric
    paper1: pd.DataFrame | None = None  # the paper's Table 1 (per latent_dim)
    paper2: pd.DataFrame | None = None  # the paper's Table 2 (methods)

    def agg(self, metric: str, stratum: str | None = None) -> pd.DataFrame:
        """Mean/std/count over seeds per latent_dim of ``metric`` (all strata, or one)."""
        df = self.summary.get(metric)
        if df is None:
            return _EMPTY_AGG
        if stratum is None:
            return df
        key = ("by-stratum", metric)
        if key not in self.cache:
            self.cache[key] = {s: g for s, g in df.groupby("_stratum", sort=False)}
        return self.cache[key].get(stratum, _EMPTY_AGG)


def build_context(run: RunData, options: Options) -> Ctx:
    """The trials split into all and completed ones, the verdicts and fixed-latent_dim
    tests at ``options``, and the summaries the figures and tables share."""
    trials = run.trials if run.trials is not None else pd.DataFrame()
    all_trials = trials.copy()
    if "trial_id" not in all_trials.columns:
        all_trials["trial_id"] = [f"row-{i}" for i in range(len(all_trials))]
    if {"dataset", "model"} <= set(all_trials.columns):
        all_trials["_stratum"] = stratum_series(all_trials)
    else:
        all_trials["_stratum"] = pd.Series(dtype=str)
    done = all_trials
    if "status" in done.columns:
        done = done[done["status"] == "completed"]
    if {"latent_dim", "auc", "dataset", "model"} <= set(done.columns):
        d = pd.to_numeric(done["latent_dim"], errors="coerce")
        done = done[d > 0].copy()
        done["latent_dim"] = d[d > 0].round().astype(int)
    else:
        done = done.iloc[:0]
    verdict_list, fixed = hypothesis_tests(run, all_trials, options)
    datasets = list(dict.fromkeys(done["dataset"].astype(str))) if len(done) else []
    models = list(dict.fromkeys(done["model"].astype(str))) if len(done) else []
    paper1, paper2 = paper_tables()
    return Ctx(
        summary=summaries(done, [v.stratum for v in verdict_list]),
        hover=hover_text(done),
        run=run,
        done=done,
        all_trials=all_trials,
        verdicts=verdict_list,
        colours={ds: DATASET_COLOURS[i % len(DATASET_COLOURS)] for i, ds in enumerate(datasets)},
        model_index={m: i for i, m in enumerate(models)},
        entropy_col=options.entropy_col,
        max_curves=options.max_curves,
        fixed=fixed,
        by_metric=metric_verdicts(run, all_trials, options),
        paper1=paper1,
        paper2=paper2,
    )


def metric_verdicts(run: RunData, trials: pd.DataFrame, options: Options) -> list:
    """The capacity verdict per stratum x higher-is-better metric (one Holm family)."""
    if trials.empty or not {"latent_dim", "dataset", "model"} <= set(trials.columns):
        return []
    trials = trials[pd.to_numeric(trials["latent_dim"], errors="coerce") > 0]
    return H.verdicts_by_metric(trials, run.scores, options.alpha, n_sim=options.n_sim)


def hypothesis_tests(
    run: RunData, trials: pd.DataFrame, options: Options
) -> tuple[list[H.StratumVerdict], list[H.FixedDimTest]]:
    """The verdicts (every stratum of the trials table, with the test-image level where
    scores.parquet has the per-image scores) and the fixed-latent_dim tests."""
    needed = {"latent_dim", "auc", "dataset", "model"}
    if trials.empty or not needed <= set(trials.columns):
        return [], []
    lat = pd.to_numeric(trials["latent_dim"], errors="coerce")
    trials = trials[lat > 0]
    if trials.empty:
        return [], []
    o = options
    verdict_list = H.verdicts(
        trials, run.scores, o.alpha, entropy_col=o.entropy_col, n_sim=o.n_sim, n_boot=o.n_boot
    )
    fixed = H.fixed_latent_dim_tests(trials, o.alpha, entropy_col=o.entropy_col, n_perm=o.n_sim)
    return verdict_list, fixed


def stratum_series(df: pd.DataFrame) -> pd.Series:
    if "stratum" in df.columns and df["stratum"].notna().all():
        return df["stratum"].astype(str)
    return df["dataset"].astype(str) + "/" + df["model"].astype(str)


def planned_strata(run: RunData, trials: pd.DataFrame) -> list[str]:
    """The strata of the study: every data set x model of its plan (space.yaml), then
    any other stratum the trials table holds (e.g. of an edited space), whether or not
    any of their trials completed."""
    space = run.space or {}
    datasets, models = space.get("datasets"), space.get("models")
    keys: list[str] = []
    if isinstance(datasets, list) and isinstance(models, list):
        for ds in datasets:
            for m in models:
                if isinstance(ds, dict) and isinstance(m, dict):
                    keys.append(
                        f"{ds.get('label') or ds.get('name')}/{m.get('label') or m.get('name')}"
                    )
    if "_stratum" in trials.columns:
        keys += [str(k) for k in trials["_stratum"].dropna()]
    return list(dict.fromkeys(keys))


def hover_text(df: pd.DataFrame) -> pd.Series:
    """'key: value' lines of the trial's config for hover boxes."""
    parts = []
    if df.empty:
        return pd.Series([], index=df.index, dtype=object)
    for key in HOVER_KEYS:
        if key in df.columns:
            col = df[key]
            if key in ("lr", "weight_decay"):
                s = col.map(lambda v: "" if pd.isna(v) else f"{v:.2g}").astype(str)
            else:
                s = col.astype(str)
            parts.append(f"{key}: " + s)
    if not parts:
        return pd.Series([""] * len(df), index=df.index)
    out = parts[0]
    for p in parts[1:]:
        out = out + "<br>" + p
    return out


def summaries(done: pd.DataFrame, order: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Mean, std and count over seeds per (stratum, latent_dim) of every numeric metric,
    computed once; strata in ``order``, latent_dim ascending."""
    if done.empty:
        return {}
    cols = [c for c in SUMMARY_COLUMNS if c in done.columns]
    num = done[["_stratum", "latent_dim"]].copy()
    for c in cols:
        num[c] = finite(done[c])
    g = num.groupby(["_stratum", "latent_dim"], sort=True)
    mean, std, count = g.mean(), g.std(), g.count()
    first = done.groupby("_stratum", sort=False)[["dataset", "model"]].first()
    rank = {s: i for i, s in enumerate(order)}
    out = {}
    for c in cols:
        df = pd.DataFrame({"mean": mean[c], "std": std[c], "count": count[c]}).reset_index()
        df = df[df["count"] > 0]
        df["dataset"] = df["_stratum"].map(first["dataset"]).astype(str)
        df["model"] = df["_stratum"].map(first["model"]).astype(str)
        df["_rank"] = df["_stratum"].map(rank).fillna(len(rank))
        out[c] = df.sort_values(["_rank", "latent_dim"], kind="stable").drop(columns="_rank")
    return out
