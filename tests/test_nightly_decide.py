"""The good/bad rule used by history, confirmation and bisect (fluxperf.nightly.decide)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxperf.nightly.decide import decide, fallback_decide, min_p_value

BASE = [100.0 + 0.1 * i for i in range(12)]


def test_fallback_flags_large_significant_slowdown():
    d = fallback_decide(BASE, [x * 1.10 for x in BASE])
    assert d.verdict == "regressed" and d.ratio == pytest.approx(1.10) and d.p_value < 0.01


def test_fallback_small_change_is_unchanged_even_if_significant():
    d = fallback_decide(BASE, [x * 1.02 for x in BASE])
    assert d.verdict == "unchanged" and d.p_value is None


def test_fallback_large_but_overlapping_is_inconclusive():
    # medians differ by 10% but the samples interleave: not significant
    base = [90.0, 100.0, 110.0, 120.0, 95.0, 105.0]
    cur = [100.0, 110.0, 120.0, 130.0, 104.0, 115.0]
    d = fallback_decide(base, cur)
    assert d.verdict == "inconclusive" and "noise" in d.reason


def test_fallback_too_few_rounds_is_inconclusive_and_says_so():
    d = fallback_decide([10.0, 10.1], [12.0, 12.1])
    assert d.verdict == "inconclusive" and "add rounds" in d.reason


def test_fallback_improvement():
    assert fallback_decide(BASE, [x * 0.8 for x in BASE]).verdict == "improved"


@pytest.mark.parametrize("bad", [[], [float("nan")], [-1.0]])
def test_bad_samples_are_rejected_with_the_rule(bad):
    with pytest.raises(ValueError, match="samples|no samples"):
        fallback_decide(BASE, bad)


def test_min_p_value():
    assert min_p_value(5, 5) == pytest.approx(1 / 252)


def test_decide_uses_the_ci_rule_when_present():
    stats = pytest.importorskip("fluxperf.bench.stats", reason="fluxperf.bench.stats (perf tier) not present")
    d = decide(BASE, [x * 1.10 for x in BASE])
    assert d.rule == "fluxperf.bench.stats" and d.verdict == "regressed"
    ref = stats.decide(BASE, [x * 1.10 for x in BASE], threshold=stats.FLOOR)
    assert d.reason == ref.reason


@settings(max_examples=40, deadline=None)
@given(st.floats(1.0, 1000.0), st.floats(1.2, 3.0))
def test_clear_separation_always_regressed(scale, factor):
    base = [scale * (1 + 0.001 * i) for i in range(12)]
    assert decide(base, [x * factor for x in base]).verdict == "regressed"
