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
    assert (apart.diff, apart.ci_low, apart.ci_high, apart.p_value, apart.within_noise) == (1.0, 1.0, 1.0, 0.0, False)
    assert (equal.diff, equal.ci_low, equal.ci_high, equal.p_value, equal.within_noise) == (0.0, 0.0, 0.0, 1.0, True)


def test_one_seed_has_no_interval_and_no_test():
    one = estimate([97.0], bounds=(0, 100))
    assert one.mean == 97.0 and one.n == 1 and all(math.isnan(v) for v in (one.std, one.ci_low, one.ci_high))
    d = welch([97.0], [98.0, 99.0])
    assert d.diff == pytest.approx(-1.5) and d.within_noise is None
    assert all(math.isnan(v) for v in (d.ci_low, d.ci_high, d.p_value))
