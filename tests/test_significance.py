"""mnist_exp.significance on its own: the edge cases scipy's t-tests leave to the caller."""

from __future__ import annotations

import math
import warnings

import pytest

from mnist_exp.significance import estimate, welch


def test_an_interval_is_clipped_to_the_bounds_it_is_given():
    # 97, 99: 98 ± t(0.975, 1) * sqrt(2) / sqrt(2) = 98 ± 12.7062, past 100 % without bounds.
    unbounded, bounded = estimate([97, 99]), estimate([97, 99], bounds=(0, 100))
    assert (unbounded.ci_low, unbounded.ci_high) == pytest.approx((98 - 12.7062, 98 + 12.7062), abs=1e-4)
    assert (bounded.ci_low, bounded.ci_high) == pytest.approx((98 - 12.7062, 100), abs=1e-4)
    assert (bounded.mean, bounded.std) == (unbounded.mean, unbounded.std)
    assert estimate([1, 3], bounds=(0, 100)).ci_low == 0


def test_identical_seeds_give_exact_answers_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy warns of precision loss on constant samples
        same = estimate([97.5, 97.5, 97.5], bounds=(0, 100))
        apart = welch([98.0, 98.0], [97.0, 97.0, 97.0])
        equal = welch([98.0, 98.0], [98.0, 98.0])
    assert (same.mean, same.std, same.ci_low, same.ci_high) == (97.5, 0.0, 97.5, 97.5)
    assert (apart.diff, apart.ci_low, apart.ci_high, apart.p_value, apart.test) == (1.0, 1.0, 1.0, 0.0, "Welch")
    assert (equal.diff, equal.ci_low, equal.ci_high, equal.p_value, equal.test) == (0.0, 0.0, 0.0, 1.0, "Welch")


def test_one_seed_has_no_interval_and_no_test():
    one = estimate([97.0], bounds=(0, 100))
    assert one.mean == 97.0 and one.n == 1 and all(math.isnan(v) for v in (one.std, one.ci_low, one.ci_high))
    d = welch([97.0], [98.0, 99.0])
    assert d.diff == pytest.approx(-1.5) and d.test is None
    assert all(math.isnan(v) for v in (d.ci_low, d.ci_high, d.p_value))


# --- paired or Welch, Holm, seeds needed: each against scipy/statsmodels called directly here ---


def test_matched_seeds_are_paired_and_unmatched_ones_welch():
    from scipy import stats

    from mnist_exp.significance import compare

    a, b = {1: 97.0, 2: 98.0, 3: 98.5}, {1: 96.5, 2: 97.2, 3: 98.4}
    paired = compare(a, b)
    reference = stats.ttest_rel([97.0, 98.0, 98.5], [96.5, 97.2, 98.4])
    assert paired.test == "paired" and paired.n == 3
    assert paired.p_value == pytest.approx(reference.pvalue)
    assert (paired.ci_low, paired.ci_high) == pytest.approx(tuple(reference.confidence_interval(0.95)))
    # By hand: differences 0.5, 0.8, 0.1: mean 0.4667, s = 0.3512, t = 0.4667 / (0.3512 / sqrt(3)) = 2.3016
    assert paired.diff == pytest.approx(0.466667, abs=1e-6) and paired.sd == pytest.approx(0.351188, abs=1e-6)
    assert reference.statistic == pytest.approx(2.3016, abs=1e-4)

    unmatched = compare(a, {4: 96.5, 2: 97.2, 3: 98.4})
    welch = stats.ttest_ind([97.0, 98.0, 98.5], [96.5, 97.2, 98.4], equal_var=False)
    assert unmatched.test == "Welch" and unmatched.p_value == pytest.approx(welch.pvalue)
    assert compare(a, {1: 96.5, 2: 97.2}).test == "Welch"  # a seed of a has no partner: not a paired design
    assert compare({1: 97.0}, b).test is None


def test_holm_on_a_known_family():
    from mnist_exp.significance import holm

    # By hand, sorted p: 0.0288 * 4 = 0.1152; 0.161 * 3 = 0.483; max(0.433 * 2, 0.483) = 0.866; max(0.76, 0.866)
    adjusted = holm([0.161, 0.0288, math.nan, 0.76, 0.433])
    assert adjusted[:2] == pytest.approx([0.483, 0.1152]) and math.isnan(adjusted[2])
    assert adjusted[3:] == pytest.approx([0.866, 0.866])


def test_seeds_needed_on_a_known_effect_and_spread():
    from statsmodels.stats.power import TTestIndPower, TTestPower

    from mnist_exp.significance import Difference, seeds_needed

    # Paired: effect 1 pp at an sd of the differences of 1 pp (d = 1): 9.94 pairs -> 10 seeds.
    assert seeds_needed(Difference(1.0, -1, 3, 0.2, "paired", 3, 1.0)) == 10
    assert TTestPower().solve_power(1.0, alpha=0.05, power=0.8) == pytest.approx(9.94, abs=0.01)
    # Welch: 0.5 pp at a pooled sd of 1 pp (d = 0.5): 63.77 per group -> 64.
    assert seeds_needed(Difference(-0.5, -3, 2, 0.6, "Welch", 3, 1.0)) == 64
    assert TTestIndPower().solve_power(0.5, alpha=0.05, power=0.8) == pytest.approx(63.77, abs=0.01)
    assert seeds_needed(Difference(30.0, 0, 60, 0.01, "paired", 3, 0.5)) == 2  # any second seed would do
    assert seeds_needed(Difference(1.0, math.nan, math.nan, math.nan, None, 1, math.nan)) is None
