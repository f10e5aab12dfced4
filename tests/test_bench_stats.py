"""The decision rule on synthetic samples: quiet on noise, loud on a real 5% slowdown, silent when throttled."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxperf.bench import stats
from fluxperf.bench.fakes import noisy

samples = st.lists(st.floats(min_value=50.0, max_value=500.0, allow_nan=False), min_size=3, max_size=40)


@settings(max_examples=60, deadline=None)
@given(xs=samples, seed=st.integers(0, 10_000), wiggle=st.floats(min_value=0.98, max_value=1.02))
def test_identical_distributions_are_never_a_regression(xs, seed, wiggle):
    """Same samples (shuffled) within +-2%: below the 3% floor, so never a regression, whatever the noise."""
    ys = list(xs)
    random.Random(seed).shuffle(ys)
    ys = [y * wiggle for y in ys]
    d = stats.decide(xs, ys, threshold=stats.noise_threshold(0.0))
    assert d.outcome != stats.REGRESSION


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(10, 30), cv=st.floats(0.001, 0.006))
def test_five_percent_slowdown_with_low_noise_is_a_regression(seed, n, cv):
    base = noisy(130.0, n, cv=cv, seed=seed)
    cur = [x * 1.05 for x in noisy(130.0, n, cv=cv, seed=seed + 1)]
    d = stats.decide(base, cur, threshold=0.03)
    assert d.outcome == stats.REGRESSION, d.reason
    assert d.change == pytest.approx(0.05, abs=0.01)
    assert d.p_slower < stats.ALPHA


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), factor=st.floats(1.0, 3.0))
def test_throttled_measurement_is_inconclusive_never_regression(seed, factor):
    base = noisy(130.0, 20, seed=seed)
    cur = [x * factor for x in noisy(130.0, 20, seed=seed + 7)]
    d = stats.decide(base, cur, threshold=0.03, invalid="hw_thermal in 40/50 samples")
    assert d.outcome == stats.INCONCLUSIVE
    assert "hw_thermal" in d.reason


@given(noise=st.floats(min_value=0.0, max_value=10.0, allow_nan=False), k=st.floats(0.5, 5.0))
def test_noise_threshold_obeys_floor_and_cap(noise, k):
    th = stats.noise_threshold(noise, k=k)
    assert stats.FLOOR <= th <= stats.CAP
    if stats.FLOOR < k * noise < stats.CAP:
        assert th == pytest.approx(k * noise)


def test_noise_threshold_rejects_bad_noise():
    with pytest.raises(ValueError, match="noise="):
        stats.noise_threshold(float("nan"))
    with pytest.raises(ValueError, match="floor"):
        stats.noise_threshold(0.01, floor=0.2, cap=0.1)


def test_large_change_with_too_few_rounds_is_inconclusive_and_says_why():
    base, cur = [100.0, 101, 99, 100, 100.5], [120.0, 121, 119, 120, 120.5]  # 5 vs 5: min p = 1/252 > 0.002
    d = stats.decide(base, cur, threshold=0.03)
    assert d.outcome == stats.INCONCLUSIVE
    assert "too few rounds" in d.reason
    assert stats.min_p_value(5, 5) == pytest.approx(1 / 252)


def test_large_significant_improvement_is_flagged():
    base = noisy(130.0, 20, seed=1)
    d = stats.decide(base, [x * 0.8 for x in noisy(130.0, 20, seed=2)], threshold=0.03)
    assert d.outcome == stats.INCONCLUSIVE and "unexplained improvement" in d.reason
    small = stats.decide(base, [x * 0.96 for x in noisy(130.0, 20, seed=2)], threshold=0.03)
    assert small.outcome == stats.PASS


def test_scalar_decisions_and_worst():
    assert stats.decide_scalar(100.0, 130.0, threshold=0.2).outcome == stats.REGRESSION
    assert stats.decide_scalar(100.0, 110.0, threshold=0.2).outcome == stats.PASS
    assert stats.decide_scalar(100.0, 50.0, threshold=0.2).outcome == stats.INCONCLUSIVE
    assert stats.worst(["pass", "inconclusive"]) == "inconclusive"
    assert stats.worst(["inconclusive", "regression", "pass"]) == "regression"
    assert stats.worst([]) == "pass"


def test_bad_samples_are_rejected_with_the_value():
    with pytest.raises(ValueError, match="-1.0"):
        stats.decide([1.0, 2.0], [-1.0, 2.0], threshold=0.03)
    with pytest.raises(ValueError, match="empty"):
        stats.decide([], [1.0], threshold=0.03)


def test_noise_estimates():
    assert stats.spread_of_medians([100.0]) == 0.0
    assert stats.spread_of_medians([99.0, 101.0]) == pytest.approx(0.01414, rel=1e-3)
    assert 0 < stats.relative_median_error(noisy(100.0, 50, cv=0.01)) < 0.01
