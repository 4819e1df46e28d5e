"""How sure we are: 95% intervals over seeds, paired or Welch t-tests, Holm's adjustment, seeds needed.

Seeds are few (typically 3), so intervals use Student's t, not the normal approximation. Two variants
run with the same seeds see the same data order (and start from the same weights when the architecture
is the same): they are compared seed by seed (paired t-test), which removes that shared noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
POWER = 0.8


@dataclass(frozen=True)
class Estimate:
    mean: float
    std: float  # sample standard deviation (ddof=1); NaN for one seed
    n: int
    ci_low: float  # 95% confidence interval of the mean; NaN for one seed
    ci_high: float


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) with its 95% interval and p-value, from `test`."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float  # NaN when a side has one seed: no test
    test: str | None  # "paired" (over `n` matched seeds), "Welch", or None (no test)
    n: int  # matched seeds (paired), else the smaller side's seeds
    sd: float  # the spread the test sees: of the seed-by-seed differences (paired), else pooled


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


def compare(a: dict, b: dict) -> Difference:
    """a - b, each {seed: value}: paired over the seeds both have when they share at least two of them
    and neither has others, else Welch's unpaired test on every seed."""
    shared = sorted(set(a) & set(b))
    if len(shared) >= 2 and set(a) == set(b):
        return paired([a[s] for s in shared], [b[s] for s in shared])
    return welch(list(a.values()), list(b.values()))


def paired(a, b) -> Difference:
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    diff, sd = float(d.mean()), float(d.std(ddof=1))
    if np.ptp(d) == 0:  # every seed moved by the same amount: exact (scipy: p NaN)
        return Difference(diff, diff, diff, 0.0 if diff else 1.0, "paired", len(d), 0.0)
    test = stats.ttest_rel(a, b)
    low, high = map(float, test.confidence_interval(CONFIDENCE))
    return Difference(diff, low, high, float(test.pvalue), "paired", len(d), sd)


def welch(a, b) -> Difference:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff, n = float(a.mean() - b.mean()), min(len(a), len(b))
    if n < 2:
        return Difference(diff, math.nan, math.nan, math.nan, None, n, math.nan)
    sd = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    if sd == 0:  # identical seeds on both sides: the difference is exact (scipy: p NaN)
        return Difference(diff, diff, diff, 0.0 if diff else 1.0, "Welch", n, 0.0)
    test = stats.ttest_ind(a, b, equal_var=False)  # Welch's: unequal variances, Welch-Satterthwaite df
    low, high = map(float, test.confidence_interval(CONFIDENCE))
    return Difference(diff, low, high, float(test.pvalue), "Welch", n, sd)


def holm(p_values) -> list[float]:
    """Holm's step-down adjustment of one family of p-values; NaN (no test) stays NaN and is not counted."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(len(p), math.nan)
    tested = ~np.isnan(p)
    if tested.any():
        adjusted[tested] = multipletests(p[tested], alpha=ALPHA, method="holm")[1]
    return adjusted.tolist()


def seeds_needed(d: Difference, power: float = POWER) -> int | None:
    """Seeds per variant for a two-sided test at 5% to detect d.diff with `power`, if the spread is d.sd;
    None when there is no spread to go by (one seed) or nothing to detect."""
    from statsmodels.stats.power import TTestIndPower, TTestPower

    if d.test is None or not d.sd or not d.diff or math.isnan(d.sd):
        return None
    solver = TTestPower() if d.test == "paired" else TTestIndPower()
    effect = abs(d.diff) / d.sd

    def enough(n: int) -> bool:
        return solver.power(effect, n, ALPHA) >= power

    # The smallest whole n with that power, by doubling then bisection (solve_power's root finder gives up
    # on small effects, and on large ones below n = 2).
    low, high = 1, 2
    while not enough(high):
        low, high = high, high * 2
        if high > 1_000_000:
            return None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high
