"""What the hypothesis tests return: verdict words, records and their formatting."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ae4ad.metrics import METRICS
from ae4ad.metrics import names as metric_names

SUPPORTED = "supported"
NOT_SHOWN = "not shown"
CONTRADICTED = "contradicted"
NOT_TESTED = "not tested"
VERDICTS = (SUPPORTED, NOT_SHOWN, CONTRADICTED, NOT_TESTED)

ENTROPY_COLUMNS: tuple[str, ...] = metric_names("latent")
"""Latent entropy estimators written by the harness (any of them can drive the tests): the
``latent`` group of :data:`ae4ad.metrics.METRICS`."""


def check_higher_is_better(metric: str) -> None:
    """ValueError when ``metric`` is registered (:mod:`ae4ad.metrics`) with a direction
    other than ``max``: the tests take the latent_dim of the highest mean as d* and call
    a drop from it a loss. Unregistered columns are taken as higher-is-better.

    >>> check_higher_is_better("auc")
    >>> check_higher_is_better("train_loss")
    Traceback (most recent call last):
    ...
    ValueError: metric 'train_loss': the hypothesis tests need a metric where higher is \
better; 'train_loss' is better when lower (direction 'min')
    """
    registered = METRICS.get(metric)
    if registered is not None and registered.direction != "max":
        raise ValueError(
            f"metric {metric!r}: the hypothesis tests need a metric where higher is better; "
            f"{metric!r} is "
            + (
                "better when lower (direction 'min')"
                if registered.direction == "min"
                else "a description without a better side"
            )
        )


# Columns of the trials table that configure a trial (besides latent_dim and seed): when
# one of them varies inside a stratum, latent_dim is not the only thing that changes.
CONFIG_COLUMNS: tuple[str, ...] = (
    "hidden_dim",
    "base_width",
    "expansion",
    "encoder_depth",
    "decoder_depth",
    "num_blocks",
    "kl_weight",
    "mem_size",
    "shrink_threshold",
    "entropy_weight",
    "erase_fraction",
    "constraint_weight",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "score",
)

OVER_TEST = "over-capacity drop: studentised max-t vs the largest latent_dim"
UNDER_TEST = "under-capacity drop: studentised max-t vs the smallest latent_dim"
FIXED_TEST = "within-latent_dim Spearman, stratified permutation"
MIN_CORRELATION_TRIALS = 4


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Correlation:
    """A Spearman correlation of latent entropy and AUC on some trials: a description,
    never a verdict (it cannot separate entropy from latent_dim, and the branches are
    chosen from the same data)."""

    branch: str
    n: int
    n_latent_dims: int
    rho: float
    ci_low: float
    ci_high: float
    reason: str = ""
    latent_dims: tuple[int, ...] = ()

    def describe(self) -> str:
        """``rho = -0.81 (95 % CI -0.90 to -0.66, n = 15 trials at 4 latent dims)``."""
        if not math.isfinite(self.rho):
            return f"n = {self.n} trials at {self.n_latent_dims} latent dims: {self.reason}"
        return (
            f"rho = {self.rho:+.2f} (95 % CI {self.ci_low:+.2f} to {self.ci_high:+.2f}, "
            f"n = {self.n} trials at {self.n_latent_dims} latent dims)"
        )


@dataclass(frozen=True)
class CapacityTest:
    """The test of one branch: is AUC at ``d*`` higher than at ``reference_dim``?

    ``p_value`` is the simulated max-t p; ``p_adjusted`` the Holm-adjusted one across the
    strata of the study (the verdict uses it). ``effect`` = mean AUC at d* minus mean AUC
    at the reference, ``effect_ci`` its 95 % simultaneous interval.
    """

    branch: str
    name: str
    best_dim: int | None
    reference_dim: int | None
    statistic: float
    p_value: float
    p_adjusted: float
    effect: float
    effect_ci: tuple[float, float]
    verdict: str
    reason: str
    p_rising: float = math.nan

    def describe(self) -> str:
        """The verdict with its numbers in one line."""
        if self.verdict == NOT_TESTED:
            return f"{self.verdict}: {self.reason}"
        lo, hi = self.effect_ci
        adj = "" if self.p_adjusted == self.p_value else f" (Holm {format_p(self.p_adjusted)})"
        return (
            f"{self.verdict}: {self.name}, p {format_p_clause(self.p_value)}{adj}; AUC "
            f"d={self.best_dim} minus d={self.reference_dim}: {self.effect:+.3f} "
            f"[{lo:+.3f}, {hi:+.3f}]"
        )


@dataclass(frozen=True)
class Uncertainty:
    """What the tests' standard errors are made of."""

    level: str  # "seeds" or "seeds and test images"
    n_seeds: int
    df: int
    seed_sd: float
    n_test_images: int = 0
    note: str = ""


@dataclass(frozen=True)
class LatentDimPrediction:
    """A label-free prediction of the best latent_dim (from training or validation data).

    ``inside`` is True when the prediction lies in the set of latent_dims not
    distinguishable from d*; ``auc_lost`` = mean AUC at d* minus mean AUC at the
    prediction (NaN when the prediction was not tried)."""

    method: str
    predicted: int | None
    source_value: float
    observed: int | None
    ratio: float
    reason: str = ""
    inside: bool | None = None
    auc_lost: float = math.nan


@dataclass(frozen=True)
class StratumVerdict:
    """Everything the report says about one stratum (data set x model)."""

    stratum: str
    dataset: str
    model: str
    metric: str
    entropy_col: str
    alpha: float
    n_trials: int
    n_seeds: int
    latent_dims: tuple[int, ...]
    mean_by_latent_dim: dict[int, float]
    std_by_latent_dim: dict[int, float]
    count_by_latent_dim: dict[int, int]
    best_latent_dim: int | None
    best_mean: float
    best_std: float
    best_set: tuple[int, ...]
    best_reason: str
    over: CapacityTest
    under: CapacityTest
    uncertainty: Uncertainty
    over_rho: Correlation
    under_rho: Correlation
    overall_rho: Correlation
    predictions: tuple[LatentDimPrediction, ...] = field(default_factory=tuple)
    subset: str = ""

    @property
    def verdict(self) -> str:
        """The headline verdict: the over-capacity test (the paper's main claim)."""
        return self.over.verdict

    @property
    def p_value(self) -> float:
        """The headline p-value, Holm-adjusted across strata."""
        return self.over.p_adjusted

    @property
    def effect(self) -> float:
        """AUC at d* minus AUC at the largest latent_dim."""
        return self.over.effect

    @property
    def effect_ci(self) -> tuple[float, float]:
        return self.over.effect_ci

    @property
    def best_ci_low(self) -> int | None:
        return min(self.best_set) if self.best_set else None

    @property
    def best_ci_high(self) -> int | None:
        return max(self.best_set) if self.best_set else None

    def best_text(self) -> str:
        """The best latent_dim with the set of latent_dims within reach of it."""
        if self.best_latent_dim is None:
            return f"no best latent_dim: {self.best_reason}"
        text = f"best latent_dim d* = {self.best_latent_dim} (mean {self.metric.upper()} "
        text += f"{self.best_mean:.3f}"
        if math.isfinite(self.best_std):
            text += f" ± {self.best_std:.3f}"
        text += f" over {self.count_by_latent_dim.get(self.best_latent_dim, 0)} trials)"
        if self.best_set:
            dims = ", ".join(str(d) for d in self.best_set)
            text += f"; not distinguishable from d* (95 %): {{{dims}}}"
        elif self.best_reason:
            text += f"; {self.best_reason}"
        return text

    def headline(self) -> str:
        """One line for the console: stratum, verdict, test, p and effect."""
        return f"{self.stratum}: {self.over.describe()}"

    def summary(self) -> str:
        """A paragraph in words."""
        parts = [f"{self.stratum}: {self.best_text()}."]
        if self.subset:
            parts.append(self.subset + ".")
        parts.append(f"Over capacity: {self.over.describe()}.")
        parts.append(f"Under capacity: {self.under.describe()}.")
        u = self.uncertainty
        parts.append(f"Uncertainty from {u.level}{': ' + u.note if u.note else ''}.")
        parts.append(
            f"Entropy-AUC Spearman (descriptive) over capacity {self.over_rho.describe()}; "
            f"all trials {self.overall_rho.describe()}."
        )
        for p in self.predictions:
            if p.predicted is None:
                parts.append(f"Prediction from {p.method}: none ({p.reason}).")
            else:
                parts.append(
                    f"Prediction from {p.method}: d = {p.predicted} "
                    f"(ratio to d*: {format_ratio(p.ratio)})."
                )
        return " ".join(parts)


@dataclass(frozen=True)
class FixedDimTest:
    """Entropy vs AUC among trials of one data set that share a latent_dim."""

    dataset: str
    entropy_col: str
    metric: str
    n: int
    groups: dict[int, int]
    rho: float
    p_value: float
    p_adjusted: float
    verdict: str
    reason: str
    entropy_range: tuple[float, float] = (math.nan, math.nan)
    name: str = FIXED_TEST

    def describe(self) -> str:
        if self.verdict == NOT_TESTED:
            return f"{self.dataset}: {self.verdict}: {self.reason}"
        adj = "" if self.p_adjusted == self.p_value else f" (Holm {format_p(self.p_adjusted)})"
        return (
            f"{self.dataset}: {self.verdict}: within-latent_dim rho = {self.rho:+.2f}, "
            f"p {format_p_clause(self.p_value)}{adj}, n = {self.n} trials in "
            f"{len(self.groups)} latent_dim groups"
        )


def format_p(p: float) -> str:
    """A p-value for humans: ``0.003``, ``< 0.001`` or ``n/a``."""
    if not math.isfinite(p):
        return "n/a"
    if p < 0.001:
        return "< 0.001"
    return f"{p:.3f}"


def format_p_clause(p: float) -> str:
    """``= 0.003`` or ``< 0.001``: what follows "p" in a sentence."""
    text = format_p(p)
    return text if text.startswith("<") else f"= {text}"


def format_ratio(r: float) -> str:
    """``2.00x`` or ``n/a``."""
    return f"{r:.2f}x" if math.isfinite(r) else "n/a"
