import time

import pytest

from fluxperf.bench.timing import Timing, time_fn


def test_warmup_is_kept_apart_from_steady_state():
    calls = []

    def work():
        calls.append(1)
        time.sleep(0.02 if len(calls) == 1 else 0.001)  # the first call is slow, like a compile

    t = time_fn(work, warmup=1, rounds=4)
    assert len(calls) == 5 and t.rounds == 4 and len(t.warmup_ms) == 1
    assert t.warmup_ms[0] > 15 and t.median_ms < 15


def test_summary_statistics():
    t = Timing(samples_ms=(1.0, 2.0, 3.0, 4.0, 100.0))
    assert t.median_ms == 3.0 and t.min_ms == 1.0
    assert t.quantile_ms(0.25) == 2.0 and t.iqr_ms == 2.0
    assert t.p90_ms == pytest.approx(4.0 + 0.6 * 96.0)
    assert t.summary()["samples_ms"] == [1.0, 2.0, 3.0, 4.0, 100.0]


def test_bad_round_counts():
    with pytest.raises(ValueError, match="rounds=0"):
        time_fn(lambda: None, rounds=0)
