"""Cleaning and formatting the values of the result tables."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def fmt(value: Any, digits: int = 3) -> str:
    """A table value as text: floats to ``digits`` places, missing ones as "–"."""
    if value is None:
        return "–"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}" if math.isfinite(value) else "–"
    return str(value)


def finite(series: pd.Series) -> pd.Series:
    """Numbers, with everything else and infinities as NaN."""
    return pd.to_numeric(series, errors="coerce").replace([np.inf, -np.inf], np.nan)


def has_values(df: pd.DataFrame | None, col: str) -> bool:
    return df is not None and col in df.columns and finite(df[col]).notna().any()


def subsample(df: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    return df if len(df) <= n else df.sample(n=n, random_state=seed).sort_index()


def seconds(s: float) -> str:
    """A duration in s, min or h."""
    if not math.isfinite(s):
        return "–"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"
