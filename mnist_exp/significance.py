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


def estimate(values) -> Estimate:
    x = np.asarray(values, dtype=float)
    n, mean = len(x), float(x.mean())
    if n < 2:
        return Estimate(mean, math.nan, n, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) * std / math.sqrt(n)
    return Estimate(mean, std, n, mean - half, mean + half)


def welch(a, b) -> Difference:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Difference(diff, math.nan, math.nan, math.nan, None)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:  # identical seeds on both sides: the difference is exact
        return Difference(diff, diff, diff, 0.0 if diff else 1.0, diff == 0)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    half = stats.t.ppf((1 + CONFIDENCE) / 2, df) * se
    p_value = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return Difference(diff, diff - half, diff + half, p_value, diff - half <= 0 <= diff + half)
