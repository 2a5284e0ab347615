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
OVER_ONLY = "over-capacity drop only"
UNDER_ONLY = "under-capacity drop only"
HEADLINES = (*VERDICTS, OVER_ONLY, UNDER_ONLY)
"""The words of a stratum's headline: the verdict words, and for a curve that shows one
drop only, which one."""

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
HEADLINE_TEST = (
    "inverted U: over- and under-capacity drops (intersection-union: the larger adjusted p)"
)
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
    level: float = 0.95

    def describe(self) -> str:
        """``rho = -0.81 (95 % CI -0.90 to -0.66, n = 15 trials at 4 latent dims)``."""
        if not math.isfinite(self.rho):
            return f"n = {self.n} trials at {self.n_latent_dims} latent dims: {self.reason}"
        return (
            f"rho = {self.rho:+.2f} ({format_level(self.level)} CI {self.ci_low:+.2f} to "
            f"{self.ci_high:+.2f}, "
            f"n = {self.n} trials at {self.n_latent_dims} latent dims)"
        )


@dataclass(frozen=True)
class CapacityTest:
    """The test of one branch: is AUC at ``d*`` higher than at ``reference_dim``?

    ``p_value`` is the simulated max-t p; ``p_adjusted`` the Holm-adjusted one across the
    strata of the study (the verdict uses it). ``effect`` = mean AUC at d* minus mean AUC
    at the reference, ``effect_ci`` its simultaneous interval at level 1 - alpha.
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
        """The headline: the paper's inverted U. ``supported`` needs both drops (each
        branch's adjusted p <= alpha); ``contradicted`` when AUC keeps rising; a curve
        with one drop only says which (``over-capacity drop only``, ``under-capacity
        drop only``); else ``not shown``, or ``not tested`` with the branches' reason."""
        o, u = self.over.verdict, self.under.verdict
        if NOT_TESTED in (o, u):
            return NOT_TESTED
        if o == CONTRADICTED:
            return CONTRADICTED
        if o == SUPPORTED and u == SUPPORTED:
            return SUPPORTED
        if o == SUPPORTED:
            return OVER_ONLY
        if u == SUPPORTED:
            return UNDER_ONLY
        return NOT_SHOWN

    @property
    def p_value(self) -> float:
        """The headline's intersection-union p: the larger of the two branches'
        Holm-adjusted p-values."""
        return max(self.over.p_adjusted, self.under.p_adjusted)

    @property
    def effect(self) -> float:
        """AUC at d* minus AUC at the largest latent_dim."""
        return self.over.effect

    @property
    def effect_ci(self) -> tuple[float, float]:
        return self.over.effect_ci

    @property
    def level_text(self) -> str:
        """The level of the intervals, e.g. ``95 %``."""
        return format_level(1 - self.alpha)

    @property
    def best_ci_low(self) -> int | None:
        return min(self.best_set) if self.best_set else None

    @property
    def best_ci_high(self) -> int | None:
        return max(self.best_set) if self.best_set else None

    def best_text(self) -> str:
        """The best latent_dim with the set of latent_dims within reach of it (none when
        the capacity test is not tested: a d* from trials that cannot test it is not a
        finding)."""
        if self.best_latent_dim is None or self.over.verdict == NOT_TESTED:
            return "no best latent_dim shown: the capacity test is not tested (the reason above)"
        text = f"best latent_dim d* = {self.best_latent_dim} (mean {self.metric.upper()} "
        text += f"{self.best_mean:.3f}"
        if math.isfinite(self.best_std):
            text += f" ± {self.best_std:.3f}"
        text += f" over {self.count_by_latent_dim.get(self.best_latent_dim, 0)} trials)"
        if self.best_set:
            dims = ", ".join(str(d) for d in self.best_set)
            text += f"; not distinguishable from d* ({self.level_text}): {{{dims}}}"
        elif self.best_reason:
            text += f"; {self.best_reason}"
        return text

    def headline(self) -> str:
        """One line: stratum, headline word, the intersection-union p and both branches'
        words (no d* or effect when not tested)."""
        if self.verdict == NOT_TESTED:
            return f"{self.stratum}: {NOT_TESTED}: {self.over.reason}"
        return (
            f"{self.stratum}: {self.verdict}: {HEADLINE_TEST}, p "
            f"{format_p_clause(self.p_value)}; over capacity {self.over.verdict}, under "
            f"capacity {self.under.verdict}; d* = {self.best_latent_dim}"
        )

    def summary(self) -> str:
        """A paragraph in words."""
        parts = [f"{self.headline()}.", f"{self.best_text()}."]
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


FIXED_TEST = "max-t of each knob level against the least regularised level"
MANIPULATION_TEST = "one-sided Spearman trend of the entropy on the knob level, permutation"


@dataclass(frozen=True)
class FixedDimTest:
    """Entropy at a fixed latent_dim, per data set x model x latent_dim: does lowering
    the latent entropy with the designed knob (kl_weight, constraint_weight, MemAE's
    memory, weight_decay; the plain AE as level 0 where the study has it) raise AUC?

    ``levels`` run from the least to the most regularised; ``mean_auc`` /
    ``mean_entropy`` / ``counts`` per level. ``manipulation_rho`` / ``manipulation_p``:
    the check that entropy falls with the knob (one-sided). ``p_value``: the max-t of
    every level against the weakest (the best level re-chosen in every null draw),
    ``p_adjusted`` its Holm adjustment across data set x model x latent_dim; ``effect``
    the AUC of the best level minus the weakest, ``effect_ci`` its simultaneous interval
    at 1 - alpha. ``p_weakest_best``: the intersection-union p of "the weakest level
    beats every other" (``contradicted``); ``p_collapse``: of "some level beats the
    strongest" (an AUC collapse at the strongest level, the under-capacity side)."""

    dataset: str
    model: str
    latent_dim: int | None
    knob: str
    levels: tuple[str, ...]
    counts: tuple[int, ...]
    mean_auc: tuple[float, ...]
    mean_entropy: tuple[float, ...]
    entropy_col: str
    metric: str
    n: int
    manipulation_rho: float
    manipulation_p: float
    best_level: str | None
    p_value: float
    p_adjusted: float
    effect: float
    effect_ci: tuple[float, float]
    p_weakest_best: float
    p_collapse: float
    verdict: str
    reason: str
    alpha: float = 0.05
    name: str = FIXED_TEST

    @property
    def cell(self) -> str:
        """``phantom/vae, latent_dim 64``."""
        d = "" if self.latent_dim is None else f", latent_dim {self.latent_dim}"
        return f"{self.dataset}/{self.model}{d}"

    def describe(self) -> str:
        if self.verdict == NOT_TESTED:
            return f"{self.cell}: {self.verdict}: {self.reason}"
        adj = "" if self.p_adjusted == self.p_value else f" (Holm {format_p(self.p_adjusted)})"
        lo, hi = self.effect_ci
        ci = f" [{lo:+.3f}, {hi:+.3f}]" if math.isfinite(lo) else ""
        return (
            f"{self.cell}: {self.verdict}: {self.knob} ({len(self.levels)} levels, "
            f"{self.n} trials); entropy falls with it (rho = {self.manipulation_rho:+.2f}, "
            f"p {format_p_clause(self.manipulation_p)}); best level {self.best_level} minus "
            f"the weakest: AUC {self.effect:+.3f}{ci}, p {format_p_clause(self.p_value)}{adj}"
            f"; {self.reason}"
        )


def format_level(level: float) -> str:
    """``95 %``, ``99 %``, ``97.5 %``: an interval's level for a label."""
    return f"{100 * level:.4g} %"


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
