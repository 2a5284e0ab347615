"""Calibration of the verdicts, measured by simulation through the public functions.

Each case packs many simulated studies (one stratum each) into one trials table and asks
``study.hypothesis.verdicts`` with ``adjust=None`` (a study with one stratum has nothing
to adjust; Holm over many strata could only lower the rate). The measured rates are
printed; docs/report.md quotes them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from study import hypothesis as H

DIMS = np.array([1, 2, 4, 8, 16, 32, 64, 128])
N_STUDIES = 1000
ALPHA = 0.05
MAX_FALSE_POSITIVE = 0.065

FLAT = np.full(8, 0.70)
RISING_THEN_FLAT = np.array([0.597, 0.615, 0.639, 0.70, 0.70, 0.70, 0.70, 0.70])
INVERTED_U = np.array([59.7, 61.5, 63.9, 71.3, 72.3, 70.0, 68.8, 68.1]) / 100


def _studies(curve: np.ndarray, n_seeds: int, sd: float, seed: int) -> pd.DataFrame:
    """``N_STUDIES`` studies of 8 latent_dims x ``n_seeds``: auc = curve + N(0, sd^2);
    entropy rises with latent_dim as in real runs."""
    rng = np.random.default_rng(seed)
    n_rows = len(DIMS) * n_seeds
    dims = np.repeat(DIMS, n_seeds)
    study = np.repeat(np.arange(N_STUDIES), n_rows)
    auc = np.tile(np.repeat(curve, n_seeds), N_STUDIES) + sd * rng.standard_normal(
        N_STUDIES * n_rows
    )
    entropy = np.tile(np.log2(dims), N_STUDIES) + 0.1 * rng.standard_normal(N_STUDIES * n_rows)
    return pd.DataFrame(
        dict(
            dataset=[f"sim{s}" for s in study],
            model="ae",
            latent_dim=np.tile(dims, N_STUDIES),
            seed=np.tile(np.tile(np.arange(n_seeds), len(DIMS)), N_STUDIES),
            status="completed",
            auc=auc,
            latent_entropy_gaussian=entropy,
        )
    )


def _rate(df: pd.DataFrame, word: str = H.SUPPORTED, **kw) -> float:
    out = H.verdicts(df, alpha=ALPHA, n_sim=4000, n_boot=0, adjust=None, **kw)
    assert len(out) == N_STUDIES
    return float(np.mean([v.verdict == word for v in out]))


@pytest.mark.parametrize("n_seeds", [2, 3])
@pytest.mark.parametrize("name,curve", [("flat", FLAT), ("rising then flat", RISING_THEN_FLAT)])
def test_false_positive_rate_of_the_headline_verdict(name, curve, n_seeds, capsys):
    rates = [
        _rate(_studies(curve, n_seeds, sd, seed=n_seeds + 10 * i))
        for i, sd in enumerate((0.01, 0.02))
    ]
    with capsys.disabled():
        print(f"\n[calibration] {name}, {n_seeds} seeds: 'supported' in {rates} of studies")
    assert max(rates) <= MAX_FALSE_POSITIVE


def test_power_on_the_inverted_u_with_two_seeds(capsys):
    df = _studies(INVERTED_U, 2, 0.01, seed=11)
    power = _rate(df)
    contradicted = _rate(df, H.CONTRADICTED)
    with capsys.disabled():
        print(f"\n[calibration] inverted U, 2 seeds, sd 0.01: power {power:.3f}")
    assert power >= 0.85
    assert contradicted == 0.0


def test_contradicted_only_when_auc_keeps_rising(capsys):
    flat = _rate(_studies(FLAT, 2, 0.01, seed=5), H.CONTRADICTED)
    rising = _rate(_studies(np.linspace(0.6, 0.9, 8), 2, 0.01, seed=6), H.CONTRADICTED)
    with capsys.disabled():
        print(f"\n[calibration] 'contradicted': flat {flat:.3f}, rising {rising:.3f}")
    assert flat <= MAX_FALSE_POSITIVE
    assert rising >= 0.85


def _fixed_dim_studies(slope: float, seed: int, n_per_group: int = 6) -> pd.DataFrame:
    """Studies at latent_dims 32 and 64 with regularisers spreading entropy at each; AUC
    depends on entropy by ``slope`` (0: not at all) plus noise."""
    rng = np.random.default_rng(seed)
    n = 2 * n_per_group
    dims = np.repeat([32, 64], n_per_group)
    entropy = rng.uniform(2.0, 6.0, size=(N_STUDIES, n)) + np.log2(dims)
    auc = 0.8 + slope * entropy + 0.01 * rng.standard_normal((N_STUDIES, n))
    return pd.DataFrame(
        dict(
            dataset=np.repeat([f"sim{s}" for s in range(N_STUDIES)], n),
            model="vae",
            latent_dim=np.tile(dims, N_STUDIES),
            seed=np.tile(np.arange(n), N_STUDIES),
            status="completed",
            auc=auc.ravel(),
            latent_entropy_gaussian=entropy.ravel(),
        )
    )


def test_fixed_latent_dim_test_calibration_and_power(capsys):
    kw = dict(alpha=ALPHA, n_perm=1000, adjust=None)
    null = H.fixed_latent_dim_tests(_fixed_dim_studies(0.0, seed=1), **kw)
    alt = H.fixed_latent_dim_tests(_fixed_dim_studies(-0.015, seed=2), **kw)
    fp = float(np.mean([t.verdict == H.SUPPORTED for t in null]))
    fp_any = float(np.mean([t.verdict in (H.SUPPORTED, H.CONTRADICTED) for t in null]))
    power = float(np.mean([t.verdict == H.SUPPORTED for t in alt]))
    with capsys.disabled():
        print(
            f"\n[calibration] fixed latent_dim: null 'supported' {fp:.3f} (either word "
            f"{fp_any:.3f}); power at slope -0.015 AUC per unit of entropy {power:.3f}"
        )
    assert fp <= MAX_FALSE_POSITIVE and fp_any <= 0.065
    assert power >= 0.85
