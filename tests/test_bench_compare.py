"""Comparison of a run with its baseline: raw vs normalized, invalid measurements, proxies, the failure message."""

from __future__ import annotations

from fluxperf.bench.compare import compare_records, fingerprint_diff
from fluxperf.bench.fakes import fake_bench, fake_calibration, noisy

NAME = "perf/test_ladder.py::test_transformer_step[flags]"


def rec(median_s, *, seed=0, cal=1.0, monitor=None, proxies=None, metrics=None):
    extra = {"calibration": {"before": fake_calibration(cal), "after": fake_calibration(cal)}, "proxies": proxies or {},
             "metrics": metrics or {}, "monitor": monitor or {"verdict": {"throttled": False, "reasons": []},
                                                              "sm_clock_mhz": {"median": 1650.0}}}
    return fake_bench(NAME, noisy(median_s, 20, seed=seed), extra)


def test_same_code_on_a_slower_machine_passes_by_normalization():
    """131 ms on one H100 vs 139 ms on another, calibration 6% slower too: normalized decides, no failure."""
    c = compare_records(rec(0.139, seed=1, cal=1.06), rec(0.131))
    assert c.raw["outcome"] == "regression"
    assert c.decided_by == "normalized" and c.outcome == "pass"


def test_real_slowdown_on_the_same_machine_is_a_regression_decided_raw():
    c = compare_records(rec(0.131 * 1.05, seed=1), rec(0.131), thresholds={"time": 0.03})
    assert c.decided_by == "raw" and c.outcome == "regression"


def test_real_slowdown_hidden_by_a_faster_machine_is_caught_normalized():
    c = compare_records(rec(0.131 * 1.05 / 1.06, seed=1, cal=1 / 1.06), rec(0.131))
    assert c.raw["outcome"] == "pass" and c.decided_by == "normalized" and c.outcome == "regression"


def test_throttled_or_drifting_measurements_are_inconclusive_never_regression():
    hot = {"verdict": {"throttled": True, "reasons": ["hw_thermal in 80/100 samples"]}, "sm_clock_mhz": {"median": 555}}
    c = compare_records(rec(0.333, seed=1, monitor=hot), rec(0.131))
    assert c.outcome == "inconclusive" and "hw_thermal" in c.invalid and "555" in c.invalid
    drift = rec(0.2, seed=1)
    drift["extra_info"]["calibration"]["after"] = fake_calibration(1.5)
    c = compare_records(drift, rec(0.131))
    assert c.outcome == "inconclusive" and "calibration" in c.invalid


def test_proxies_exact_and_memory_tight():
    base = rec(0.131, proxies={"kernels_per_step": 1200, "graph_breaks": 0, "recompiles": 0, "peak_mem_gib": 30.0})
    more = rec(0.131, seed=1, proxies={"kernels_per_step": 1201, "graph_breaks": 0, "recompiles": 0,
                                       "peak_mem_gib": 30.5})
    c = compare_records(more, base)
    by = {ch.quantity: ch.outcome for ch in c.checks}
    assert by["kernels_per_step"] == "regression" and by["peak_mem_gib"] == "pass" and c.outcome == "regression"
    fewer = rec(0.131, seed=1, proxies={"kernels_per_step": 600, "graph_breaks": 0, "recompiles": 0,
                                        "peak_mem_gib": 20.0})
    c = compare_records(fewer, base)
    assert {ch.quantity: ch.outcome for ch in c.checks}["kernels_per_step"] == "inconclusive"
    assert "unexplained improvement" in c.message()


def test_compile_time_is_compared_like_a_timing():
    base = rec(0.131, metrics={"compile_cold_s": 100.0, "compile_warm_s": 15.0})
    c = compare_records(rec(0.131, seed=1, metrics={"compile_cold_s": 150.0, "compile_warm_s": 15.5}), base,
                        thresholds={"time": 0.03, "compile_cold_s": 0.2, "compile_warm_s": 0.25})
    by = {ch.quantity: ch.outcome for ch in c.checks}
    assert by["compile_cold_s"] == "regression" and by["compile_warm_s"] == "pass"


def test_failure_message_names_everything():
    bfp = {"versions": {"torch": "2.11.0", "torchao": "0.18.0"}, "gpu": {"driver": "580.1"}, "host": "a"}
    cfp = {"versions": {"torch": "2.12.0", "torchao": "0.18.0"}, "gpu": {"driver": "580.1"}, "host": "a"}
    c = compare_records(rec(0.131 * 1.05, seed=1), rec(0.131), thresholds={"time": 0.03}, baseline_fp=bfp,
                        current_fp=cfp)
    msg = c.message()
    medians = (f"{c.baseline_median_ms:.2f} ms (baseline)", f"{c.current_median_ms:.2f} ms (current)")
    for needle in ("REGRESSION", NAME, *medians, "+5.", "threshold 3.0%", "torch: 2.11.0 -> 2.12.0", "raw"):
        assert needle in msg, needle
    assert fingerprint_diff(bfp, bfp) == []


def test_short_compile_jitter_is_not_a_regression():
    """Measured on the H100: the same regional compile took 11.2 s then 14.3 s (+28%)."""
    from fluxperf.bench.compare import _metric_checks

    base = {"metrics": {"compile_cold_s": 11.15}}
    checks = _metric_checks({"metrics": {"compile_cold_s": 14.33}}, base, {"compile_cold_s": 0.2}, None)
    assert [c.outcome for c in checks] == ["pass"]
    checks = _metric_checks({"metrics": {"compile_cold_s": 40.0}}, base, {"compile_cold_s": 0.2}, None)
    assert [c.outcome for c in checks] == ["regression"]
    big = {"metrics": {"compile_cold_s": 267.0}}
    checks = _metric_checks({"metrics": {"compile_cold_s": 330.0}}, big, {"compile_cold_s": 0.2}, None)
    assert [c.outcome for c in checks] == ["regression"]


def test_cached_steps_proxy_allows_one_step_and_names_the_direction():
    base = rec(3.9, proxies={"cached_steps": 6})

    def outcome_of(cached):
        c = compare_records(rec(3.9, seed=1, proxies={"cached_steps": cached}), base)
        return {ch.quantity: ch for ch in c.checks}["cached_steps"]

    assert outcome_of(6).outcome == "pass" and outcome_of(5).outcome == "pass" and outcome_of(7).outcome == "pass"
    fewer = outcome_of(4)
    assert fewer.outcome == "regression" and "fell from 6 to 4" in fewer.reason
    more = outcome_of(9)
    assert more.outcome == "inconclusive" and "unexplained improvement" in more.reason
    # a benchmark without a cache has no such check
    plain = compare_records(rec(3.9, seed=1, proxies={}), rec(3.9, proxies={}))
    assert "cached_steps" not in {ch.quantity for ch in plain.checks}
