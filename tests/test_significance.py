"""mnist_exp.significance, each statistic against an independent computation here (statsmodels or scipy
called directly, or by hand), and the method itself on simulated runs with a known true difference."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from mnist_exp.significance import (
    ALPHA,
    CROSSED,
    MCNEMAR,
    NESTED,
    Difference,
    anova,
    difference,
    estimate,
    holm,
    judge,
    plan,
)


def test_an_interval_over_seeds_is_clipped_to_the_bounds_it_is_given():
    # 97, 99: 98 ± t(0.975, 1) * sqrt(2) / sqrt(2) = 98 ± 12.7062, past 100 % without bounds.
    unbounded, bounded = estimate([97, 99]), estimate([97, 99], bounds=(0, 100))
    assert (unbounded.ci_low, unbounded.ci_high) == pytest.approx((98 - 12.7062, 98 + 12.7062), abs=1e-4)
    assert (bounded.ci_low, bounded.ci_high) == pytest.approx((98 - 12.7062, 100), abs=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy warns of precision loss on constant samples
        same = estimate([97.5, 97.5, 97.5], bounds=(0, 100))
    assert (same.mean, same.std, same.ci_low, same.ci_high) == (97.5, 0.0, 97.5, 97.5)
    one = estimate([97.0])
    assert one.n == 1 and all(math.isnan(v) for v in (one.std, one.ci_low, one.ci_high))


# --- seeds x images ---


def test_the_two_way_anova_matches_statsmodels():
    import pandas as pd
    from statsmodels.formula.api import ols
    from statsmodels.stats.anova import anova_lm

    y = np.random.default_rng(1).normal(size=(3, 12)) + np.arange(3)[:, None] * 0.4
    long = pd.DataFrame([(s, i, y[s, i]) for s in range(3) for i in range(12)], columns=["seed", "image", "y"])
    reference = anova_lm(ols("y ~ C(seed) + C(image)", long).fit())
    ms = reference["sum_sq"] / reference["df"]

    a = anova(y)
    assert (a.ms_seed, a.ms_image, a.ms_resid) == pytest.approx(
        (ms["C(seed)"], ms["C(image)"], ms["Residual"]), rel=1e-10
    )


def test_a_difference_over_matched_seeds_and_images_by_hand():
    rng = np.random.default_rng(2)
    a = {s: rng.random(40) < 0.8 for s in range(3)}
    b = {s: rng.random(40) < 0.7 for s in range(3)}
    d = difference(a, b)

    y = 100 * np.stack([a[s].astype(float) - b[s] for s in range(3)])  # seeds x images, pp
    S, N = y.shape
    seed_means, image_means, grand = y.mean(1), y.mean(0), y.mean()
    ms_seed = N * ((seed_means - grand) ** 2).sum() / (S - 1)
    ms_image = S * ((image_means - grand) ** 2).sum() / (N - 1)
    ms_resid = ((y - seed_means[:, None] - image_means + grand) ** 2).sum() / ((S - 1) * (N - 1))
    assert ms_seed > ms_resid and ms_image > ms_resid  # every component is used as it is
    variance = (ms_seed + ms_image - ms_resid) / (S * N)
    df = (ms_seed + ms_image - ms_resid) ** 2 / (
        ms_seed**2 / (S - 1) + ms_image**2 / (N - 1) + ms_resid**2 / ((S - 1) * (N - 1))
    )
    assert d.test == CROSSED and (d.seeds, d.images) == (3, 40)
    assert d.diff == pytest.approx(grand) and d.se == pytest.approx(math.sqrt(variance)) and d.df == pytest.approx(df)
    assert d.p_value == pytest.approx(2 * stats.t.sf(abs(grand) / math.sqrt(variance), df))
    half = stats.t.ppf(0.975, df) * math.sqrt(variance)
    assert d.interval(0.95) == pytest.approx((grand - half, grand + half))


def test_a_difference_over_other_seeds_nests_them_in_their_variants():
    rng = np.random.default_rng(3)
    a = {s: rng.random(50) < 0.8 for s in (0, 1, 2)}
    b = {s: rng.random(50) < 0.6 for s in (5, 6)}
    d = difference(a, b)

    ya = 100 * np.stack(list(a.values())).astype(float)
    yb = 100 * np.stack(list(b.values())).astype(float)
    terms = [(np.var(ya.mean(0) - yb.mean(0), ddof=1), 49)]  # the per-image difference of the means
    for y in (ya, yb):
        S, N = y.shape
        ms_seed = N * y.mean(1).var(ddof=1)
        resid = y - y.mean(1)[:, None] - y.mean(0) + y.mean()
        ms_resid = (resid**2).sum() / ((S - 1) * (N - 1))
        if ms_seed > ms_resid:
            terms += [(ms_seed / S, S - 1), (-ms_resid / S, (S - 1) * (N - 1))]
    total = sum(v for v, _ in terms)
    assert d.test == NESTED and d.seeds == 2 and d.diff == pytest.approx(ya.mean() - yb.mean())
    assert d.se == pytest.approx(math.sqrt(total / 50))
    assert d.df == pytest.approx(total**2 / sum(v**2 / df for v, df in terms))


def test_one_seed_each_is_mcnemars_exact_test_and_one_seed_on_a_side_no_test():
    a = np.array([1] * 90 + [1] * 8 + [0] * 2, dtype=bool)  # 8 images only a gets right, 2 only b
    b = np.array([1] * 90 + [0] * 8 + [1] * 2, dtype=bool)
    d = difference({0: a}, {0: b})

    assert d.test == MCNEMAR and d.diff == pytest.approx(6.0)
    assert d.p_value == pytest.approx(stats.binomtest(8, 10, 0.5).pvalue)  # McNemar's exact test, by hand
    per_image = 100 * (a.astype(float) - b)
    assert d.se == pytest.approx(per_image.std(ddof=1) / 10) and d.df == 99
    assert difference({0: a, 1: a}, {0: b}).test is None


def test_identical_per_seed_differences_are_no_certainty():
    # The case: on each of 3 seeds the variant gets one more of 2,000 images right (+0.05 pp a seed);
    # a t-test over seeds alone saw no spread and said p = 0, "helps".
    rng = np.random.default_rng(4)
    b = {s: rng.random(2000) < 0.95 for s in range(3)}
    a = {}
    for s, answers in b.items():
        a[s] = answers.copy()
        a[s][np.flatnonzero(~answers)[s]] = True
    d = difference(a, b)
    (j,) = judge([d])

    assert [int(a[s].sum() - b[s].sum()) for s in range(3)] == [1, 1, 1]
    # Counted over seeds and images: p = 0.083, and the whole interval lies within ±0.5 pp.
    assert d.p_value > 0.05 and j.verdict == "equivalent"
    same = difference(b, b)  # identical answers everywhere: no spread at all, so no test, never p = 0 or 1
    assert same.test is None and same.why == "no spread" and judge([same])[0].verdict == "untested"


def test_coverage_over_seeds_and_images_on_simulated_runs():
    """Runs with a known true difference: each image's difficulty, each variant's own per-image strengths, a
    seed effect and a seed x image interaction on a probit scale, answers drawn per image; 3 seeds. Over 400
    repetitions the 95% intervals cover the true difference about 95% of the time; an interval over the 3
    seeds' accuracies alone, blind to the images, does not."""
    rng = np.random.default_rng(2026)
    seeds, images, repetitions = 3, 400, 400
    effect = {"a": 1.6, "b": 1.45}
    sd = {"seed": 0.05, "image": 1.0, "variant x image": 1.5, "seed x image": 0.3}
    scale = math.sqrt(1 + sum(v**2 for v in sd.values()))
    truth = 100 * (stats.norm.cdf(effect["a"] / scale) - stats.norm.cdf(effect["b"] / scale))

    covered = seed_only = 0
    for _ in range(repetitions):
        difficulty = rng.normal(0, sd["image"], images)

        def runs(mean, difficulty=difficulty):
            strengths = rng.normal(0, sd["variant x image"], images)
            answers = {}
            for s in range(seeds):
                latent = mean + rng.normal(0, sd["seed"]) + difficulty + strengths
                latent = latent + rng.normal(0, sd["seed x image"], images)
                answers[s] = rng.random(images) < stats.norm.cdf(latent)
            return answers

        a, b = runs(effect["a"]), runs(effect["b"])
        low, high = difference(a, b).interval(0.95)
        covered += low <= truth <= high
        per_seed = [100 * (a[s].mean() - b[s].mean()) for s in range(seeds)]
        with warnings.catch_warnings():  # scipy's precision warning when the seeds' differences nearly agree
            warnings.simplefilter("ignore", RuntimeWarning)
            interval = stats.ttest_1samp(per_seed, 0).confidence_interval(0.95)
        seed_only += interval.low <= truth <= interval.high

    assert 0.92 <= covered / repetitions <= 0.98
    assert seed_only / repetitions < 0.9


# --- a family: Holm, Bonferroni, equivalence, plans ---


def _difference(diff, se, df, test=CROSSED, seed_ms=5.0, seed_df=2, floor=0.01):
    p = 2 * stats.t.sf(abs(diff) / se, df)
    return Difference(diff, se, df, p, test, 3, 2000, None, seed_ms, seed_df, 1, floor)


def test_a_family_gets_holm_verdicts_and_bonferroni_intervals():
    from statsmodels.stats.multitest import multipletests

    family = [_difference(1.2, 0.4, 20), _difference(0.96, 0.38, 20), _difference(-0.3, 0.5, 20)]
    judged = judge(family, smallest_effect=0.5)

    expected = multipletests([d.p_value for d in family], method="holm")[1]
    assert [j.p_adj for j in judged] == pytest.approx(expected)
    half = stats.t.ppf(1 - ALPHA / 3 / 2, 20) * 0.4  # 1 - 0.05/3, two-sided
    assert (judged[0].ci_low, judged[0].ci_high) == pytest.approx((1.2 - half, 1.2 + half))
    assert [j.confidence for j in judged] == pytest.approx([1 - 0.05 / 3] * 3)
    assert [j.verdict for j in judged] == ["better", "better", "undecided"]
    # The second: Holm's p (0.040) < 0.05, but its Bonferroni interval reaches below 0: said, not hidden.
    assert expected[1] < 0.05 and judged[1].ci_low < 0 and judged[1].holm_only and not judged[0].holm_only


def test_a_family_without_a_test_is_left_unadjusted():
    # holm() hands statsmodels an empty family then, and relies on its answer: none.
    assert [math.isnan(p) for p in holm([math.nan, math.nan])] == [True, True]
    assert holm([]) == []


def test_mcnemars_comparisons_form_their_own_family():
    family = [_difference(1.2, 0.4, 20), _difference(2.0, 0.6, 1999, test=MCNEMAR)]
    judged = judge(family)

    assert [j.confidence for j in judged] == [0.95, 0.95]  # two families of one
    assert judged[1].seeds_needed is None  # no seed noise to plan from


def test_no_difference_worth_having_on_a_planted_null():
    """Two variants drawn alike (5 seeds x 20,000 images): the 1 - 0.05/m interval falls inside ±0.5 pp, so both
    one-sided tests of TOST reject at 0.05/(2m) (Lakens 2017): 'no difference worth having'."""
    rng = np.random.default_rng(5)
    difficulty = rng.random(20_000)

    def runs():
        return {s: rng.random(20_000) < 0.9 + 0.09 * difficulty for s in range(5)}

    d = difference(runs(), runs())
    other = _difference(3.0, 0.5, 30)  # a second member: m = 2
    judged = judge([d, other], smallest_effect=0.5)

    lower = stats.t.sf((d.diff + 0.5) / d.se, d.df)  # H0: diff <= -0.5
    upper = stats.t.cdf((d.diff - 0.5) / d.se, d.df)  # H0: diff >= +0.5
    assert max(lower, upper) < ALPHA / 2 / 2
    assert judged[0].verdict == "equivalent" and max(abs(judged[0].ci_low), abs(judged[0].ci_high)) < 0.5
    small = judge([_difference(0.2, 0.05, 30)], smallest_effect=0.5)[0]
    assert small.verdict == "better by less"  # helps, by less than the smallest effect worth having


def test_seeds_needed_where_statsmodels_power_is_nan():
    """The plan of a comparison whose images cost nothing (floor 0) is a one-sample t-test's over seeds:
    statsmodels' TTestPower at effect 3.99 gives 0.34 at n = 2, 0.91 at n = 3, and NaN at n = 4, which a
    search read as "too few" (13 seeds for what 3 do)."""
    from statsmodels.stats.power import TTestPower

    power = TTestPower()
    assert power.power(3.99, 2, 0.05) < 0.8 < power.power(3.99, 3, 0.05) and math.isnan(power.power(3.99, 4, 0.05))
    images, smallest, df = 2000, 0.5, 2
    upper_per_mean_square = df / stats.chi2.ppf(0.2, df)  # the plan's 80% upper confidence bound
    seed_ms = (smallest / 3.99) ** 2 * images / upper_per_mean_square  # effect 3.99 at that bound
    d = _difference(0.3, 0.2, 2, seed_ms=seed_ms, seed_df=df, floor=0.0)

    assert plan(d, (seed_ms, df), m=1, smallest=smallest) == {"seeds_needed": 3, "floor_half_width": 0.0}


def test_a_plan_counts_the_test_images_and_says_when_only_more_of_them_would_do():
    d = _difference(0.3, 0.3, 40, seed_ms=10.0, seed_df=2, floor=0.04)  # the images alone: ±0.39 at 95%
    found = plan(d, (10.0, 2), m=1, smallest=0.5)
    assert found["larger_test_set"] and found["floor_half_width"] == pytest.approx(stats.t.ppf(0.975, 1999) * 0.2)
    # A wider target half-width is reachable: the smallest S with t(1 - 0.05/2, df) * sqrt(Var(S)) <= 0.5.
    seeds = plan(d, (10.0, 2), m=1, smallest=0.5, half_width=0.42)["seeds_needed"]
    upper = 10.0 * 2 / stats.chi2.ppf(0.2, 2)

    def half(s):
        seed_term = upper / (s * 2000)
        variance = seed_term + 0.04
        df = variance**2 / (seed_term**2 / (s - 1) + 0.04**2 / 1999)
        return stats.t.ppf(0.975, df) * math.sqrt(variance)

    assert seeds > 2 and half(seeds) <= 0.42 < half(seeds - 1)
