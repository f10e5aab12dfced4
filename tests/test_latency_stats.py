"""fluxperf.bench.latency: average/min/percentiles, numpy's type-7 method, and the runs each percentile needs."""

from __future__ import annotations

import numpy as np
import pytest

from fluxperf.bench.latency import (
    METHOD_TEXT,
    InsufficientRunsError,
    cell_text,
    latency_stats,
    percentile_of_column,
    runs_needed,
    short_cell,
    stat_columns,
    stat_row,
)


@pytest.mark.parametrize("p, need", [(50, 2), (90, 10), (95, 20), (99, 100), (99.9, 1000), (75, 4)])
def test_runs_needed_is_ceil_one_over_one_minus_q(p, need):
    assert runs_needed(p) == need


@pytest.mark.parametrize("p", [0, 100, -1, 150])
def test_runs_needed_refuses_percentiles_outside_0_100(p):
    with pytest.raises(ValueError, match="must be in \\(0, 100\\)"):
        runs_needed(p)


def test_enough_runs_give_numpy_linear_percentiles():
    rng = np.random.default_rng(0)
    xs = rng.gamma(4.0, 10.0, size=100)
    s = latency_stats(xs)
    assert s.n == 100 and s.avg_ms == pytest.approx(xs.mean()) and s.min_ms == xs.min()
    for p in (50, 90, 99):  # Hyndman & Fan type 7, computed by hand: rank h = (n - 1) q, interpolated
        h = (len(xs) - 1) * p / 100
        lo = int(np.floor(h))
        srt = np.sort(xs)
        by_hand = srt[lo] + (h - lo) * (srt[min(lo + 1, len(xs) - 1)] - srt[lo])
        assert s.percentile(p) == pytest.approx(by_hand)
    assert s.values[99] < xs.max()  # a real p99, not the maximum


def test_too_few_runs_refuse_the_percentile_and_say_what_it_needs():
    s = latency_stats([10.0, 12.0, 11.0, 30.0, 10.5, 11.5, 10.2, 10.8, 11.1, 10.9])  # n = 10
    assert s.percentile(90) == pytest.approx(np.percentile(s_list := [10.0, 12.0, 11.0, 30.0, 10.5, 11.5, 10.2,
                                                                      10.8, 11.1, 10.9], 90))
    assert s.values[99] is None and s.needs[99] == 100 and max(s_list) == 30.0
    with pytest.raises(InsufficientRunsError) as err:
        s.percentile(99)
    msg = str(err.value)
    assert "\n" not in msg and "n=10" in msg and "n >= 100" in msg and "--runs 100" in msg
    assert cell_text(s, 99) == "n/a (needs 100 runs)" and cell_text(s, 90) == f"{s.values[90]:.2f}"


def test_one_run_has_average_and_min_but_no_percentile():
    s = latency_stats([42.0])
    assert (s.avg_ms, s.min_ms) == (42.0, 42.0)
    assert s.values == {50: None, 90: None, 99: None}
    assert s.to_dict()["p50_needs_runs"] == 2 and s.to_dict()["method"] == METHOD_TEXT


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, -2.0], [float("inf")]])
def test_bad_samples_are_refused(bad):
    with pytest.raises(ValueError, match="latency_stats"):
        latency_stats(bad)


def test_columns_rows_and_cells():
    assert stat_columns("image_") == ["image_avg_ms", "image_min_ms", "image_p50_ms", "image_p90_ms", "image_p99_ms"]
    row = stat_row(latency_stats([1.0, 2.0, 3.0]), "image_")
    assert row == {"image_avg_ms": 2.0, "image_min_ms": 1.0, "image_p50_ms": 2.0, "image_p90_ms": None,
                   "image_p99_ms": None}
    assert stat_row(None, "x_") == dict.fromkeys(stat_columns("x_"))
    assert percentile_of_column("image_p99_ms") == 99 and percentile_of_column("p90_ms") == 90
    assert percentile_of_column("image_min_ms") is None and percentile_of_column("step_ms") is None
    assert short_cell(float("nan"), 99) == "n/a (needs 100 runs)" and short_cell(1.234, 50) == "1.23"
    assert "Hyndman & Fan" in METHOD_TEXT and "linear" in METHOD_TEXT
