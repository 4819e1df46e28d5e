"""How sure we are: 95% confidence intervals over seeds and Welch's test between two variants.

Seeds are few (typically 3), so intervals use Student's t, not the normal approximation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    mean: float
    std: float  # sample standard deviation (ddof=1); NaN for one seed
    n: int
    ci_low: float  # 95% confidence interval of the mean; NaN for one seed
    ci_high: float


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) with Welch's interval and p-value (unequal variances)."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    within_noise: bool | None  # True when the interval contains 0; None when a side has one seed


def estimate(values, bounds: tuple[float, float] = (-math.inf, math.inf)) -> Estimate:
    """`bounds`: the values' valid range (an accuracy's 0..100), which the interval is clipped to."""
    x = np.asarray(values, dtype=float)
    n, mean = len(x), float(x.mean())
    if n < 2:
        return Estimate(mean, math.nan, n, math.nan, math.nan)
    # Identical seeds: the interval is the mean itself (scipy would warn of precision loss).
    ci = (mean, mean) if np.ptp(x) == 0 else stats.ttest_1samp(x, popmean=0).confidence_interval(CONFIDENCE)
    low, high = np.clip(ci, *bounds)
    return Estimate(mean, float(x.std(ddof=1)), n, float(low), float(high))


def welch(a, b) -> Difference:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Difference(diff, math.nan, math.nan, math.nan, None)
    if np.ptp(a) == np.ptp(b) == 0:  # identical seeds on both sides: the difference is exact (scipy: p NaN)
        return Difference(diff, diff, diff, 0.0 if diff else 1.0, diff == 0)
    test = stats.ttest_ind(a, b, equal_var=False)  # Welch's: unequal variances, Welch-Satterthwaite df
    low, high = map(float, test.confidence_interval(CONFIDENCE))
    return Difference(diff, low, high, float(test.pvalue), low <= 0 <= high)
