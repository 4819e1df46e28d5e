"""How sure we are over seeds and test images: intervals, tests, families, verdicts, plans (docs/analysis.md)."""

from __future__ import annotations

import bisect
import math
from collections import namedtuple
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8
SMALLEST_EFFECT_PP = 0.5  # --smallest-effect's default: half a point, ten of 2,000 test images
PLAN_CONFIDENCE = 0.8  # a plan takes the seed variance's upper bound at this confidence (Browne 1995)
MAX_SEEDS = 2**16  # a plan asking for more says the test images, not the seeds, are what is missing
# Tests: the seeds of both variants match, differ (nested in their variants), or one each (McNemar's).
CROSSED, NESTED, MCNEMAR = "seeds x images", "seeds in variants x images", "McNemar"


# The mean over n seeds, their sample standard deviation (ddof=1) and the mean's 95% interval: NaN for one seed.
Estimate = namedtuple("Estimate", "mean std n ci_low ci_high")


def estimate(values, bounds: tuple[float, float] = (-math.inf, math.inf)) -> Estimate:
    """Over seeds alone (the learning curves' bands), the interval clipped to `bounds` (an accuracy's 0..100)."""
    x = np.asarray(values, dtype=float)
    n, mean = len(x), float(x.mean())
    if n < 2:
        return Estimate(mean, math.nan, n, math.nan, math.nan)
    # Identical seeds: the interval is the mean itself (scipy would warn of precision loss).
    ci = (mean, mean) if np.ptp(x) == 0 else stats.ttest_1samp(x, popmean=0).confidence_interval(1 - ALPHA)
    low, high = np.clip(ci, *bounds)
    return Estimate(mean, float(x.std(ddof=1)), n, float(low), float(high))


# --- seeds x images ---


Anova = namedtuple("Anova", "seeds images mean ms_seed ms_image ms_resid")


def anova(table) -> Anova:
    """Two-way ANOVA of a seeds x images table, one value per cell: the interaction is the residual."""
    y = np.asarray(table, dtype=float)
    s, n = y.shape
    grand, by_seed, by_image = y.mean(), y.mean(axis=1), y.mean(axis=0)
    resid = y - by_seed[:, None] - by_image[None, :] + grand
    ms_seed = float(n * ((by_seed - grand) ** 2).sum() / (s - 1)) if s > 1 else math.nan
    ms_resid = float((resid**2).sum() / ((s - 1) * (n - 1))) if s > 1 else math.nan
    return Anova(s, n, float(grand), ms_seed, float(s * ((by_image - grand) ** 2).sum() / (n - 1)), ms_resid)


def satterthwaite(terms) -> tuple[float, float]:
    """(sum, degrees of freedom) of a linear combination of mean squares: terms = (coefficient x MS, df)."""
    total = sum(value for value, _ in terms)
    denominator = sum(value**2 / df for value, df in terms if value)
    return float(total), (float(total**2 / denominator) if denominator else math.inf)


def _mean_variance(a: Anova) -> tuple[float, float]:
    """Var(mean) of a crossed seeds x images table and its df, each variance component kept at 0 or above."""
    keep_seed, keep_image = a.ms_seed > a.ms_resid, a.ms_image > a.ms_resid
    df_resid = (a.seeds - 1) * (a.images - 1)
    terms = [(a.ms_resid * (1 - keep_seed - keep_image), df_resid)]
    terms += [(a.ms_seed, a.seeds - 1)] * keep_seed + [(a.ms_image, a.images - 1)] * keep_image
    total, df = satterthwaite(terms)
    return total / (a.seeds * a.images), df


def accuracy(correct) -> Estimate:
    """A variant's accuracy (%) over its seeds x test images (correct: bool [S, N]); one seed: no interval."""
    y = 100.0 * np.asarray(correct, dtype=float)
    per_seed = y.mean(axis=1)
    if len(y) < 2:
        return estimate(per_seed)
    a = anova(y)
    variance, df = _mean_variance(a)
    half = stats.t.ppf(1 - ALPHA / 2, df) * math.sqrt(variance) if variance > 0 else 0.0
    low, high = np.clip((a.mean - half, a.mean + half), 0, 100)
    return Estimate(a.mean, float(per_seed.std(ddof=1)), a.seeds, float(low), float(high))


def variant_accuracy(answers: dict | None, accuracies: list[float]) -> Estimate:
    """accuracy() from the runs' answers ({seed: correct per image}); without them, no interval."""
    if answers is not None:
        return accuracy(np.stack(list(answers.values())))
    return estimate(accuracies)._replace(ci_low=math.nan, ci_high=math.nan)


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) in percentage points, with its standard error over seeds and images."""

    diff: float
    se: float  # NaN: no test (why says why)
    df: float
    p_value: float
    test: str | None  # CROSSED, NESTED, MCNEMAR or None
    seeds: int  # per variant (matched), else the smaller side's
    images: int
    why: str | None = None  # why there is no test
    # For plans: seeds' mean square and df, how many sides' seeds add variance, the images' share (floor).
    seed_ms: float = math.nan
    seed_df: int = 0
    sides: int = 1
    floor: float = math.nan

    def interval(self, confidence: float) -> tuple[float, float]:  # of a tested difference
        half = stats.t.ppf(1 - (1 - confidence) / 2, self.df) * self.se
        return self.diff - half, self.diff + half


def difference(a: dict, b: dict) -> Difference:
    """a - b, each {seed: correct per image}: CROSSED (same seeds), NESTED (others), MCNEMAR (one each) or no test."""
    ya = {s: 100.0 * np.asarray(v, dtype=float) for s, v in a.items()}
    yb = {s: 100.0 * np.asarray(v, dtype=float) for s, v in b.items()}
    images = len(next(iter(ya.values())))
    diff = float(np.mean(list(ya.values())) - np.mean(list(yb.values())))
    seeds = min(len(ya), len(yb))
    if set(ya) == set(yb) and len(ya) >= 2:
        d = anova(np.stack([ya[s] - yb[s] for s in sorted(ya)]))
        variance, df = _mean_variance(d)
        floor = max(d.ms_image - d.ms_resid, 0) / (d.seeds * d.images)
        found = Difference(diff, math.sqrt(variance), df, math.nan, CROSSED, seeds, images, None, d.ms_seed, seeds - 1)
        return _tested(replace(found, floor=floor))
    if len(ya) == len(yb) == 1:
        return _mcnemar(next(iter(ya.values())) > 0, next(iter(yb.values())) > 0)
    if seeds < 2:
        return Difference(diff, math.nan, math.nan, math.nan, None, seeds, images, "one seed on a side")
    return _nested(list(ya.values()), list(yb.values()), diff)


def _nested(a: list, b: list, diff: float) -> Difference:
    """Seeds differ between the variants, images are shared (docs/analysis.md, "Seeds that differ")."""
    sides = [anova(np.stack(x)) for x in (a, b)]
    images = sides[0].images
    per_image = np.stack(a).mean(axis=0) - np.stack(b).mean(axis=0)
    s2 = float(per_image.var(ddof=1))
    terms = [(s2, images - 1)]
    for side in sides:
        if side.ms_seed > side.ms_resid:
            terms += [(side.ms_seed / side.seeds, side.seeds - 1)]
            terms += [(-side.ms_resid / side.seeds, (side.seeds - 1) * (images - 1))]
    total, df = satterthwaite(terms)
    seed_df = sum(side.seeds - 1 for side in sides)
    pooled = sum(side.ms_seed * (side.seeds - 1) for side in sides) / seed_df
    floor = max(s2 - sum(side.ms_resid / side.seeds for side in sides), 0) / images
    seeds = min(side.seeds for side in sides)
    found = Difference(diff, math.sqrt(total / images), df, math.nan, NESTED, seeds, images, None, pooled, seed_df, 2)
    return _tested(replace(found, floor=floor))


def _tested(d: Difference) -> Difference:
    """The t-test of a seeds x images difference; none without spread: no spread is not certainty."""
    if not d.se > 0:
        return replace(d, se=math.nan, df=math.nan, test=None, why="no spread")
    return replace(d, p_value=float(2 * stats.t.sf(abs(d.diff) / d.se, d.df)))


def _mcnemar(a: np.ndarray, b: np.ndarray) -> Difference:
    """One run each: McNemar's exact test on the images; the interval: Student's t over per-image differences."""
    from statsmodels.stats.contingency_tables import mcnemar

    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    d = 100.0 * (a.astype(float) - b.astype(float))
    diff = float(d.mean())
    if only_a + only_b == 0:
        return Difference(diff, math.nan, math.nan, math.nan, None, 1, len(d), "no spread")
    table = [[int((a & b).sum()), only_a], [only_b, int((~a & ~b).sum())]]
    p = float(mcnemar(table, exact=True).pvalue)
    return Difference(diff, float(d.std(ddof=1) / math.sqrt(len(d))), len(d) - 1.0, p, MCNEMAR, 1, len(d))


# --- a family of comparisons: verdicts, intervals, plans ---


@dataclass(frozen=True)
class Judgement:
    p_adj: float  # Holm within the family; NaN: no test
    confidence: float  # of the interval: 1 - ALPHA / m (Bonferroni)
    ci_low: float
    ci_high: float
    verdict: str  # better, worse (Holm), ... by less, equivalent (TOST), undecided or untested
    holm_only: bool = False  # better or worse by Holm, while the Bonferroni interval still touches 0
    seeds_needed: int | None = None  # per variant, to detect the smallest effect (or reach the half-width)
    larger_test_set: bool = False  # no number of seeds can, on this test set
    floor_half_width: float = math.nan  # the interval half-width these test images leave with unlimited seeds


def holm(p_values) -> list[float]:
    """Holm's step-down adjustment of one family of p-values; NaN (no test) stays NaN and is not counted."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(len(p), math.nan)
    tested = ~np.isnan(p)
    adjusted[tested] = multipletests(p[tested], alpha=ALPHA, method="holm")[1]  # none tested: nothing to adjust
    return adjusted.tolist()


def judge(diffs: list[Difference], smallest_effect: float = SMALLEST_EFFECT_PP, half_width: float | None = None):
    """One family of comparisons (one question); McNemar's, about those seeds' models only, form their own."""
    judged = {}
    for kind in (False, True):
        members = [i for i, d in enumerate(diffs) if (d.test == MCNEMAR) == kind]
        judged.update(zip(members, _judge_family([diffs[i] for i in members], smallest_effect, half_width)))
    return [judged[i] for i in range(len(diffs))]


def _judge_family(diffs: list[Difference], smallest: float, half_width: float | None) -> list[Judgement]:
    m = max(sum(d.test is not None for d in diffs), 1)
    confidence = 1 - ALPHA / m
    pooled = _pooled_seed_ms(diffs)
    judged = []
    for d, p_adj in zip(diffs, holm([d.p_value for d in diffs])):
        if d.test is None:
            judged.append(Judgement(math.nan, confidence, math.nan, math.nan, "untested"))
            continue
        low, high = d.interval(confidence)
        inside = -smallest < low and high < smallest
        if p_adj < ALPHA:
            verdict = ("better" if d.diff > 0 else "worse") + (" by less" if inside else "")
        else:
            verdict = "equivalent" if inside else "undecided"
        j = Judgement(p_adj, confidence, low, high, verdict, holm_only=p_adj < ALPHA and low <= 0 <= high)
        if verdict == "undecided" and _design(d) in pooled:
            j = replace(j, **plan(d, pooled[_design(d)], m, smallest, half_width))
        judged.append(j)
    return judged


def _design(d: Difference) -> tuple:
    return d.test, d.seeds, d.sides, d.images


def _pooled_seed_ms(diffs: list[Difference]) -> dict[tuple, tuple[float, int]]:
    """The seed mean square pooled over the comparisons sharing a design: 2 df at 3 seeds become several times that."""
    pooled: dict[tuple, tuple[float, int]] = {}
    for d in diffs:
        if d.test in (CROSSED, NESTED) and d.seed_df > 0:
            total, df = pooled.get(_design(d), (0.0, 0))
            pooled[_design(d)] = (total + d.seed_ms * d.seed_df, df + d.seed_df)
    return {design: (total / df, df) for design, (total, df) in pooled.items()}


def plan(d: Difference, seed_ms: tuple[float, int], m: int, smallest: float, half_width: float | None = None) -> dict:
    """Seeds per variant for a comparison like `d` to detect `smallest` pp with POWER at ALPHA / m (or, given
    `half_width`, for its interval to be that narrow); larger_test_set where unlimited seeds fall short."""
    ms, df = seed_ms
    upper = ms * df / stats.chi2.ppf(1 - PLAN_CONFIDENCE, df)
    images = d.images
    level = 1 - ALPHA / m / 2

    def enough(seeds: float) -> bool:
        if math.isinf(seeds):
            variance, dof = d.floor, images - 1.0
        else:
            variance, dof = satterthwaite(
                [(d.sides * upper / (seeds * images), d.sides * (seeds - 1)), (d.floor, images - 1)]
            )
        if variance <= 0:
            return True
        critical = stats.t.ppf(level, dof)
        if half_width is not None:
            return critical * math.sqrt(variance) <= half_width
        shift = smallest / math.sqrt(variance)
        power = stats.nct.sf(critical, dof, shift) + stats.nct.sf(critical, dof, -shift)  # both tails
        if not math.isfinite(power):  # statsmodels' TTestPower returns NaN at some n: never read it as "too few"
            raise ArithmeticError(f"power of a t-test at {dof:.1f} df, shift {shift:.3f}: {power}")
        return power >= POWER

    floor = stats.t.ppf(level, images - 1) * math.sqrt(d.floor)
    seeds = range(2, MAX_SEEDS + 1)  # the fewest seeds that are enough (more never hurt), if unlimited ones are
    found = bisect.bisect_left(seeds, True, key=enough) if enough(math.inf) else len(seeds)
    if found == len(seeds):
        return {"larger_test_set": True, "floor_half_width": floor}
    return {"seeds_needed": seeds[found], "floor_half_width": floor}


# --- two variants of the table, and the families they form ---

# The columns of a judged comparison, as the table holds them, and those named apart from their fields.
RENAMED = {"diff": "vs_baseline_pp", "why": "why_untested", "seeds": "n_compared"}
RENAMED |= {"ci_low": "vs_baseline_pp_ci_low", "ci_high": "vs_baseline_pp_ci_high"}
COMPARISON = ("baseline", "vs_baseline_pp", "vs_baseline_pp_ci_low", "vs_baseline_pp_ci_high", "confidence", "p_value")
COMPARISON += ("p_adj", "test", "why_untested", "n_compared", "images", "verdict", "holm_only", "seeds_needed")
COMPARISON += ("larger_test_set", "floor_half_width")


def comparison(a, b) -> dict:
    """Row a against row b (variant, acc_pct, n, digest, answers: {seed: correct}), image by image."""
    if a.answers is None or b.answers is None or a.digest != b.digest:
        why = "no per-image answers" if a.answers is None or b.answers is None else "other test images"
        d = Difference(a.acc_pct - b.acc_pct, math.nan, math.nan, math.nan, None, min(a.n, b.n), 0, why)
    else:
        d = difference(a.answers, b.answers)
    fields = ("diff", "p_value", "test", "why", "seeds", "images")
    return {"baseline": b.variant, **{RENAMED.get(name, name): getattr(d, name) for name in fields}, "difference": d}


def family(pairs: list, smallest_effect: float = SMALLEST_EFFECT_PP, half_width: float | None = None) -> list[dict]:
    """[(row, baseline)] as one family (one question): each comparison() with its judgement (judge)."""
    found = [comparison(row, baseline) for row, baseline in pairs]
    for c, j in zip(found, judge([c["difference"] for c in found], smallest_effect, half_width)):
        c.update({RENAMED.get(key, key): value for key, value in asdict(j).items()})
    return found


def selected_on_test(c: dict) -> dict:
    """A comparison whose variant the test split chose: the difference stays, no p-value or interval."""
    untested = dict.fromkeys(("p_value", "p_adj", "vs_baseline_pp_ci_low", "vs_baseline_pp_ci_high"), math.nan)
    return {**c, **untested, "verdict": "selected on test", "holm_only": False}
