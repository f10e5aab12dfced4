"""E-Divisive change-point detection over nightly series."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxperf.nightly.changepoint import detect_changes, e_divisive


def test_one_step_is_found_where_it_began():
    rng = np.random.default_rng(0)
    series = list(100 + rng.normal(0, 0.5, 20)) + list(108 + rng.normal(0, 0.5, 15))
    (cp,) = e_divisive(series, labels=[f"d{i}" for i in range(35)])
    assert cp.index == 20 and cp.label == "d20" and cp.rel_change == pytest.approx(0.08, abs=0.01)
    assert cp.p_value < 0.01


def test_two_steps():
    rng = np.random.default_rng(1)
    series = list(100 + rng.normal(0, 0.5, 15)) + list(110 + rng.normal(0, 0.5, 15)) + list(104 + rng.normal(0, 0.5, 15))
    assert [c.index for c in e_divisive(series)] == [15, 30]


def test_noise_only_gives_nothing():
    rng = np.random.default_rng(2)
    assert e_divisive(list(100 + rng.normal(0, 1.0, 60))) == []


def test_a_single_outlier_night_is_not_a_step():
    series = [100.0] * 15 + [130.0] + [100.0] * 15
    assert e_divisive(series) == []


def test_small_steps_below_min_rel_change_are_not_reported():
    series = [100.0] * 15 + [101.0] * 15  # a real but 1% step
    assert e_divisive(series, min_rel_change=0.02) == []
    assert [c.index for c in e_divisive(series, min_rel_change=0.005)] == [15]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="finite"):
        e_divisive([1.0, float("nan")])
    with pytest.raises(ValueError, match="one label per point"):
        e_divisive([1.0, 2.0], labels=["a"])


@settings(max_examples=25, deadline=None)
@given(st.integers(4, 26), st.floats(0.05, 0.5), st.integers(0, 10_000))
def test_any_clear_step_is_found_at_its_start(k, rel, seed):
    rng = np.random.default_rng(seed)
    n = 30
    series = 100 * (1 + np.where(np.arange(n) >= k, rel, 0.0)) + rng.normal(0, 0.2, n)
    found = e_divisive(list(series), permutations=99, alpha=0.05)
    assert [c.index for c in found] == [k]


def test_detect_changes_labels_by_date():
    entries = [{"date": f"2026-11-{d:02d}", "benchmark": "b", "median_ms": 10.0 if d < 15 else 12.0}
               for d in range(1, 25)]
    (cp,) = detect_changes(entries)["b"]
    assert cp.label == "2026-11-15"
